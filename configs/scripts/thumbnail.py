"""Write one PNG thumbnail of a video with ffmpeg: ``thumbnail.py VIDEO OUT.png``.

ffmpeg does not create the output's folder, so this does first. Under chute
(``WORK_RESULT_FILE`` set) the result is ``{"video": ..., "thumbnail": ...}``
with absolute paths: the message a pool's ``output`` passes downstream. A video
ffmpeg cannot read ("Invalid data found when processing input") exits 65
(EX_DATAERR): chute dead-letters it at once instead of retrying a file that
will never decode. Any other failure keeps ffmpeg's exit code, so it is retried.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EX_DATAERR = 65
INVALID = "Invalid data found when processing input"


def main() -> int:
    if len(sys.argv) != 3:
        print("usage: thumbnail.py VIDEO OUT.png", file=sys.stderr)
        return 64  # EX_USAGE
    video, out = sys.argv[1], Path(sys.argv[2])
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", video,
            "-frames:v", "1", "-vf", "scale=160:-1", str(out)]  # fmt: skip
    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        out.unlink(missing_ok=True)  # never leave half a thumbnail behind
        if INVALID in done.stderr:
            return EX_DATAERR
    result_file = os.environ.get("WORK_RESULT_FILE")
    if done.returncode == 0 and result_file:
        result = {"video": str(Path(video).resolve()), "thumbnail": str(out.resolve())}
        Path(result_file).write_text(json.dumps(result))
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
