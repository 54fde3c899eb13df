"""``Job.to_dict``: what a task row stores of its job; ``dataclasses.asdict``'s values, sharing
nothing mutable with the job, and read back by ``from_dict`` as the same job."""

from __future__ import annotations

import json
from dataclasses import asdict

from opendance.domain import Mode
from opendance.engines.base import Job, MediaRef


def test_to_dict_is_asdict_shares_nothing_and_reads_back():
    job = Job(
        task_id="task_x",
        model="m",
        mode=Mode("image-to-video"),
        prompt="a fox ✓",
        width=864,
        height=480,
        fps=16,
        duration=5,
        seed=7,
        engine={"engine": "wan", "call_kwargs": {"guidance": [1.0, {"deep": True}]}, "steps": 30},
        negative_prompt="blur",
        image=MediaRef("tasks/x/in/0.png", "image", 640, 480, format="png"),
        images=[MediaRef("tasks/x/in/1.png", "image", 10, 20)],
        videos=[MediaRef("tasks/x/in/2.mp4", "video", 64, 64, 2.5, True, "mp4")],
        options={"watermark": False, "nested": {"a": [1]}},
        input_bytes=123,
        loras=[{"name": "style", "scale": 0.8, "weights": {"path": "/l"}}],
    )
    d = job.to_dict()
    assert d == {**asdict(job), "mode": "image-to-video"}
    json.dumps(d)  # plain JSON values
    d["engine"]["call_kwargs"]["guidance"][1]["deep"] = False
    d["options"]["nested"]["a"].append(2)
    d["loras"][0]["weights"]["path"] = "/other"
    d["images"][0]["width"] = 1
    assert job.engine["call_kwargs"]["guidance"][1] == {"deep": True} and job.options["nested"] == {"a": [1]}
    assert job.loras[0]["weights"] == {"path": "/l"} and job.images[0].width == 10
    assert Job.from_dict(job.to_dict()) == job
