"""Video and image I/O: the only layer (with weights/) that touches the file system."""

from vcomp.io.atomic import atomic_dir, atomic_file, check_writable_target, write_json
from vcomp.io.image import read_image, read_image_unchanged
from vcomp.io.stream import SafetensorsWriter, VideoWriter
from vcomp.io.transform import cover_geometry, parse_size, resize_cover, resize_frames
from vcomp.io.video import (
                            Clip,
                            H264Encoder,
                            Sampling,
                            VideoInfo,
                            encode_h264,
                            iter_frames,
                            probe,
                            read_clip,
                            x264_options,
)
from vcomp.io.write import (
                            contact_sheet,
                            output_kind,
                            write_contact_sheet,
                            write_gif,
                            write_png,
                            write_png_frames,
                            write_video,
)

__all__ = [
    "Clip", "H264Encoder", "SafetensorsWriter", "VideoWriter", "x264_options", "Sampling", "VideoInfo", "atomic_dir", "atomic_file", "check_writable_target",
    "contact_sheet", "cover_geometry", "encode_h264", "iter_frames", "output_kind", "parse_size",
    "probe", "read_clip", "read_image", "read_image_unchanged", "resize_cover", "resize_frames", "write_contact_sheet", "write_gif",
    "write_json", "write_png", "write_png_frames", "write_video",
]
