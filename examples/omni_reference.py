"""Omni-reference from Python, with the sample media of this folder: two pictures, a clip and
a tune go to the server as they are (the client turns local files into data: URIs).

    python examples/omni_reference.py            # writes omni.mp4 here

The server: OPENDANCE_BASE_URL (default http://127.0.0.1:8000), OPENDANCE_API_KEY if it has keys.
"""

from __future__ import annotations

import os
from pathlib import Path

import opendance

HERE = Path(__file__).resolve().parent


def main() -> None:
    with opendance.Client() as client:
        task = client.create(
            os.environ.get("OPENDANCE_MODEL", "jisudance2.0-480p"),
            "a day over the hills, from dawn to dusk, to a little tune",
            images=[HERE / "first-frame.jpg", HERE / "last-frame.jpg"],
            videos=[HERE / "clip.mp4"],
            audios=[HERE / "tune.m4a"],
            duration=5,
        )
        print(f"created {task.id}")
        task = client.wait(task, on_progress=lambda t: print(f"{t.status} {t.progress}%"))
        print(client.download(task, "omni.mp4"))


if __name__ == "__main__":
    main()
