"""Writing frames to a video file as they are generated."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np


class VideoWriter:
    """An H.264 MP4 (or GIF) written frame by frame; closing keeps whatever was written."""

    def __init__(self, path: str | Path, fps: float) -> None:
        import imageio.v2 as imageio

        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"cannot write {self.path}: folder {self.path.parent} does not exist")
        self.frames = 0
        if self.path.suffix.lower() == ".gif":
            self._writer = imageio.get_writer(self.path, mode="I", duration=1000 / fps, loop=0)
        else:
            self._writer = imageio.get_writer(
                self.path, fps=fps, codec="libx264", quality=8, macro_block_size=1, ffmpeg_log_level="error"
            )

    def write(self, frames: np.ndarray) -> None:
        """Append frames (T, H, W, 3) uint8."""
        for frame in frames:
            self._writer.append_data(frame)
        self.frames += len(frames)

    def close(self) -> None:
        """Finish the file."""
        self._writer.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def read_video(path: str | Path) -> np.ndarray:
    """All frames of a video file, (T, H, W, 3) uint8."""
    import imageio.v2 as imageio

    return np.stack([frame[..., :3] for frame in imageio.mimread(path, memtest=False)])
