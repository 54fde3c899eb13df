"""The ``opendance`` client commands run as a user runs them: a subprocess, with the output,
the file written and every exit code checked."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading

from opendance.cli_client import ProgressBar
from opendance.client import Task
from opendance.media.encode import probe_mp4
from opendance.testing.server import free_port

BAR = re.compile(r"^(task_\S+)  (queued|in_progress|completed|failed)\s+\[[#.]{30}\]\s+(\d+)%  (\d+):(\d\d)$")


def test_generate_makes_an_mp4_with_a_progress_bar(live, run_cli, tmp_path):
    r = run_cli("generate", "a fox in the snow", "--model", "slow", "--seed", "3", "--out", "fox.mp4", "--base-url", live.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "fox.mp4"
    info = probe_mp4(tmp_path / "fox.mp4")
    assert (info["width"], info["height"]) == (864, 480) and info["video_codec"] == "h264"
    # Not a terminal: one line per change of status or tenth of progress, each a whole bar.
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    bars = [BAR.match(line) for line in lines]
    assert all(bars), lines
    assert len({m[1] for m in bars}) == 1  # one task
    assert [m[2] for m in bars][0] == "queued" and bars[-1][2] == "completed" and bars[-1][3] == "100"
    assert any(m[2] == "in_progress" and 0 < int(m[3]) < 100 for m in bars), lines
    percents = [int(m[3]) for m in bars]
    assert percents == sorted(percents)
    assert "\r" not in r.stderr


def test_generate_with_every_input_kind_and_the_default_model(live, run_cli, png, media_host, tmp_path):
    url = media_host.add("/cli/ref.png", png.read_bytes(), "image/png")
    r = run_cli("generate", "", "--image", str(png), "--base-url", live.url, "--duration", "5")
    assert r.returncode == 0, r.stderr
    assert "model: jisudance2.0-480p" in r.stderr  # the server's first model
    written = tmp_path / r.stdout.strip()
    assert written.name.startswith("task_") and written.suffix == ".mp4"
    assert probe_mp4(written)["width"] == 864  # 16:9, from the image's shape
    r = run_cli(
        "generate",
        "refs",
        "--model",
        "quick-480p",
        "--ref-image",
        str(png),
        "--ref-image",
        url,
        "--aspect-ratio",
        "1:1",
        "-o",
        "refs.mp4",
        "--base-url",
        live.url,
    )
    assert r.returncode == 0, r.stderr
    assert (probe_mp4(tmp_path / "refs.mp4")["width"], probe_mp4(tmp_path / "refs.mp4")["height"]) == (640, 640)


def test_a_failed_task_exits_1(live, run_cli, tmp_path):
    r = run_cli("generate", "x", "--model", "broken", "--out", "never.mp4", "--base-url", live.url)
    assert r.returncode == 1, r.stderr
    assert "failed" in r.stderr and "scenario_failure" in r.stderr
    assert not (tmp_path / "never.mp4").exists()
    task_id = BAR.match(r.stderr.splitlines()[0])[1]
    s = run_cli("status", task_id, "--base-url", live.url)
    assert s.returncode == 1 and s.stdout.startswith(f"{task_id}  failed")


def test_bad_usage_and_4xx_exit_2_with_the_servers_message(live, run_cli):
    r = run_cli("generate", "x", "--duration", "4", "--model", "quick-480p", "--base-url", live.url)
    assert r.returncode == 2
    assert "duration must be between 5 and 15 seconds" in r.stderr and "(duration)" in r.stderr
    r = run_cli("generate", "x", "--image", "missing.png", "--base-url", live.url)
    assert r.returncode == 2 and "missing.png" in r.stderr
    r = run_cli("generate", "x", "--duration", "five")  # argparse itself
    assert r.returncode == 2 and "invalid int value" in r.stderr
    r = run_cli("status", "task_" + "n" * 32, "--base-url", live.url)
    assert r.returncode == 2 and "404" in r.stderr and "task_not_found" in r.stderr


def test_key_and_url_from_the_environment(keyed_server, run_cli, tmp_path):
    env = {"OPENDANCE_BASE_URL": keyed_server.url, "OPENDANCE_API_KEY": "k-alice"}
    r = run_cli("generate", "keyed", "--model", "jisudance2.0-480p", "-o", "k.mp4", env=env)
    assert r.returncode == 0, r.stderr
    assert probe_mp4(tmp_path / "k.mp4")["video_codec"] == "h264"
    r = run_cli("models", env={**env, "OPENDANCE_API_KEY": "nope"})
    assert r.returncode == 2 and "401" in r.stderr and "invalid_api_key" in r.stderr
    r = run_cli("models", "--api-key", "k-bob", env=env)  # a flag beats the environment
    assert r.returncode == 0 and "jisudance2.0-480p  480p" in r.stdout


def test_an_unreachable_server_exits_3(run_cli):
    r = run_cli("list", "--base-url", f"http://127.0.0.1:{free_port()}")
    assert r.returncode == 3 and "cannot reach the server" in r.stderr


def test_status_list_cancel_models(live, run_cli, http):
    tid = http.post("/v1/video/generations", json={"model": "slow", "prompt": "cli cancel"}).json()["id"]
    r = run_cli("status", tid, "--json", "--base-url", live.url)
    assert r.returncode == 0 and '"id": "' + tid + '"' in r.stdout
    r = run_cli("list", "--limit", "1", "--base-url", live.url)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1 and r.stdout.startswith(tid)
    r = run_cli("cancel", tid, "--base-url", live.url)
    assert r.returncode == 0 and r.stdout.startswith(f"{tid}  failed") and "cancelled" in r.stdout
    r = run_cli("cancel", tid, "--base-url", live.url)
    assert r.returncode == 2 and "409" in r.stderr and "task_not_cancellable" in r.stderr
    r = run_cli("list", "--status", "failed", "--model", "slow", "--base-url", live.url)
    assert r.returncode == 0 and tid in r.stdout
    r = run_cli("models", "--base-url", live.url)
    assert r.returncode == 0 and r.stdout.splitlines()[0].startswith("jisudance2.0-480p  480p  text-to-video")


def test_on_a_terminal_the_bar_is_redrawn_in_place(live, tmp_path):
    """stderr is a pseudo-terminal here, as in an interactive shell."""
    main, sub = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENDANCE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "opendance", "generate", "tty", "--model", "slow", "-o", "t.mp4", "--base-url", live.url],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=sub,
    )
    os.close(sub)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(main, 4096)
            except OSError:  # the other end closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    out, _ = proc.communicate(timeout=120)
    reader.join(10)
    os.close(main)
    shown = b"".join(chunks).decode()
    assert proc.returncode == 0, shown
    assert out.decode().strip() == "t.mp4"
    redraws = [part for part in shown.split("\r") if part.strip()]
    assert len(redraws) >= 3 and shown.count("\n") <= 2, repr(shown)  # in place, then one newline
    assert "completed" in redraws[-1] and "100%" in redraws[-1]


def test_progress_bar_rendering():
    stream = io.StringIO()
    bar = ProgressBar(stream, tty=False)
    task = Task(id="task_x", status="in_progress", progress=45)
    assert BAR.match(bar.render(task))[3] == "45"
    bar.update(task)
    bar.update(task)  # nothing new: no second line
    bar.update(Task(id="task_x", status="in_progress", progress=46))  # same tenth: still none
    bar.update(Task(id="task_x", status="in_progress", progress=50))
    assert len(stream.getvalue().splitlines()) == 2
    tty = io.StringIO()
    bar = ProgressBar(tty, tty=True)
    bar.update(Task(id="task_x", status="queued", progress=0))
    bar.update(Task(id="task_x", status="completed", progress=100))
    bar.close()
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().endswith("\n") and tty.getvalue().count("\n") == 1


def test_the_help_lists_the_client_commands():
    r = subprocess.run([sys.executable, "-m", "opendance", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for command in ("serve", "generate", "status", "list", "cancel", "models"):
        assert command in r.stdout
