"""agent_scenarios: run the real coding agents on a scratch repository through the recording proxy.

Claude Code (`claude -p`, then `claude -p --continue`) and Codex CLI (`codex exec`, then `codex exec resume
--last`) each run two sessions of a few turns; aider runs a few one-shot messages with an edit to a file of
its chat between them. Each agent gets its own copy of the scratch repository (a few of llamanode's own
source files), its own empty HOME, and its own proxy and recording; no agent needs the network.

    scripts/install-agents                                            # once
    .venv/bin/python -m bench.agent_scenarios --serve llama-server    # or --serve llamanode, --upstream URL
    -> bench/out/agents/<time>/{claude,codex,aider}.jsonl, one <agent>-<step>.log per agent run

Recordings hold the agents' prompts; bench/out/ is gitignored and recordings are never committed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .agent_wire import read_recording
from .common import OUT_DIR, REPO, log
from .processes import Server, free_port, llama_server_cmd, llamanode_serve_cmd, module_cmd

AGENTS = ("claude", "codex", "aider")
SCRATCH_FILES = ("errors.py", "textstream.py", "config.py")
MODEL_NAME = "smollm2"
CLAUDE_SESSIONS = (
    ("List the Python files in this repository.", "What does the first class in errors.py do?"),
    ("Read textstream.py and summarize it in one sentence.", "Which function in textstream.py is the longest?"),
)
CODEX_SESSIONS = (
    ("List the files in this repository.", "Show the first lines of errors.py."),
    ("What does config.py define?", "Name one class in textstream.py."),
)
AIDER_MESSAGES = (
    "Add a one-line docstring to the first class in errors.py.",
    "What does the function at the end of errors.py return?",
    "Rename that function to describe it better.",
)
EDIT_FOR_AIDER = (
    "\n\ndef harness_added(value: int) -> int:\n"
    '    """Added by the harness between two messages."""\n'
    "    return value * 2\n"
)


@dataclass(frozen=True)
class Step:
    """One agent process: argv, extra environment, and an optional edit made just before it runs."""

    name: str
    argv: list[str]
    env: dict[str, str]
    before: Callable[[Path], None] | None = None


@dataclass
class AgentRun:
    agent: str
    recording: Path
    steps: list[dict[str, object]] = field(default_factory=list)


def install_agents() -> dict[str, Path]:
    """Run scripts/install-agents (idempotent) and return where each agent's binary is."""
    out = subprocess.run(
        ["bash", str(REPO / "scripts" / "install-agents")], capture_output=True, text=True, check=True
    ).stdout
    pairs = (line.split("=", 1) for line in out.splitlines() if "=" in line)
    return {name: Path(path) for name, path in pairs}


def scratch_repo(dest: Path) -> Path:
    """A git repository holding a few of llamanode's source files, committed with a fixed date."""
    dest.mkdir(parents=True)
    for name in SCRATCH_FILES:
        shutil.copy(REPO / "src" / "llamanode" / name, dest / name)
    (dest / "README.md").write_text("# scratch\n\nA few modules copied from llamanode for agent runs.\n")
    stamp = "2026-01-01T00:00:00+00:00"
    env = {**os.environ, "GIT_AUTHOR_DATE": stamp, "GIT_COMMITTER_DATE": stamp}
    git = ["git", "-C", str(dest), "-c", "user.name=harness", "-c", "user.email=harness@localhost"]
    subprocess.run([*git, "init", "-q"], check=True, env=env)
    subprocess.run([*git, "add", "."], check=True, env=env)
    subprocess.run([*git, "commit", "-q", "-m", "scratch"], check=True, env=env)
    return dest


def base_env(home: Path) -> dict[str, str]:
    """A clean environment: no credentials or settings of the caller leak into an agent."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8", "TERM": "dumb"}


def claude_steps(binary: Path, proxy_url: str, turns: int, sessions: int) -> list[Step]:
    env = {
        "ANTHROPIC_BASE_URL": proxy_url,
        "ANTHROPIC_API_KEY": "dummy",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        # any side request Claude Code makes with its small model names the same model
        "ANTHROPIC_SMALL_FAST_MODEL": MODEL_NAME,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": MODEL_NAME,
    }
    common = ["--model", MODEL_NAME, "--max-turns", "3"]
    steps = []
    for s, (opening, follow_up) in enumerate(CLAUDE_SESSIONS[:sessions], 1):
        steps.append(Step(f"s{s}t1", [str(binary), "-p", opening, *common], env))
        steps += [
            Step(f"s{s}t{t}", [str(binary), "-p", follow_up, "--continue", *common], env) for t in range(2, turns + 1)
        ]
    return steps


def codex_config(home: Path, proxy_url: str) -> None:
    """CODEX_HOME/config.toml: a local provider speaking the Responses API at the proxy, and the read-only
    sandbox (bundled bubblewrap): commands the model asks for run, but can write nothing. In the config, as
    `codex exec resume` takes no --sandbox flag."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'model = "{MODEL_NAME}"\nmodel_provider = "local"\nsandbox_mode = "read-only"\napproval_policy = "never"\n\n'
        f'[model_providers.local]\nname = "local"\nbase_url = "{proxy_url}/v1"\nwire_api = "responses"\n'
        'env_key = "LOCAL_KEY"\n'
    )


def codex_steps(binary: Path, home: Path, turns: int, sessions: int) -> list[Step]:
    env = {"CODEX_HOME": str(home), "LOCAL_KEY": "dummy"}
    flags = ["--skip-git-repo-check"]
    steps = []
    for s, (opening, follow_up) in enumerate(CODEX_SESSIONS[:sessions], 1):
        steps.append(Step(f"s{s}t1", [str(binary), "exec", *flags, opening], env))
        resume = [str(binary), "exec", "resume", "--last", *flags, follow_up]
        steps += [Step(f"s{s}t{t}", resume, env) for t in range(2, turns + 1)]
    return steps


def _edit_for_aider(repo: Path) -> None:
    with (repo / "errors.py").open("a", encoding="utf-8") as f:
        f.write(EDIT_FOR_AIDER)


def aider_metadata(home: Path, window: int) -> Path:
    """The model's window for aider, so that it neither fetches litellm's model list from the network (it
    does when the model is unknown, whatever LITELLM_LOCAL_MODEL_COST_MAP says) nor reports a window of 0."""
    path = home / "model-metadata.json"
    info = {"max_input_tokens": window, "max_tokens": window, "max_output_tokens": window, "mode": "chat",
            "input_cost_per_token": 0.0, "output_cost_per_token": 0.0, "litellm_provider": "openai"}  # fmt: skip
    path.write_text(json.dumps({f"openai/{MODEL_NAME}": info}))
    return path


def aider_steps(binary: Path, proxy_url: str, messages: int, metadata: Path) -> list[Step]:
    """One file in the chat: aider 0.86 keeps chat files in a set, so with two or more their order in the
    prompt changes from one process to the next (string hashing is randomised per process)."""
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "AIDER_ANALYTICS": "false"}
    flags = [
        "--model-metadata-file", str(metadata),
        "--model", f"openai/{MODEL_NAME}", "--openai-api-base", f"{proxy_url}/v1", "--openai-api-key", "dummy",
        "--no-auto-commits", "--yes-always", "--no-check-update", "--analytics-disable", "--no-show-release-notes",
        "--no-show-model-warnings", "--no-pretty", "--no-fancy-input", "--no-detect-urls", "--no-notifications",
    ]  # fmt: skip
    return [
        Step(f"m{i}", [str(binary), *flags, "--message", text, "errors.py"], env,
             before=_edit_for_aider if i == 2 else None)
        for i, text in enumerate(AIDER_MESSAGES[:messages], 1)
    ]  # fmt: skip


@contextmanager
def recording_proxy(upstream: str, recording: Path, label: str, cap: int | None, force_tool: bool) -> Iterator[str]:
    """bench/agent_proxy.py in a process of its own; yields its base URL. Chat-completion streams are always
    asked for their usage (aider does not ask; a recording without token counts is of no use here)."""
    port = free_port()
    cmd = module_cmd("agent_proxy", "--upstream", upstream, "--port", str(port), "--record", str(recording),
                     "--label", label)  # fmt: skip
    cmd += ["--max-output-tokens", str(cap)] if cap is not None else []
    cmd += ["--force-tool-first"] if force_tool else []
    cmd += ["--stream-usage"]
    with Server(f"proxy-{label}", cmd, port, "/_proxy/health") as proxy:
        proxy.start(recording.parent, timeout=60)
        yield proxy.url


def run_steps(
    steps: list[Step], repo: Path, home: Path, log_dir: Path, label: str, timeout: float
) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    for step in steps:
        if step.before is not None:
            step.before(repo)
        started = time.monotonic()
        log_file = log_dir / f"{label}-{step.name}.log"
        log(f"{label} {step.name}: {' '.join(step.argv[1:4])} ...")
        with log_file.open("wb") as sink:
            try:
                env = {**base_env(home), **step.env}
                proc = subprocess.run(
                    step.argv, cwd=repo, env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    timeout=timeout, check=False,
                )  # fmt: skip
                rc: int | str = proc.returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        seconds = round(time.monotonic() - started, 1)
        log(f"{label} {step.name}: exit {rc} after {seconds} s")
        results.append({"step": step.name, "exit": rc, "seconds": seconds, "log": str(log_file)})
    return results


def run_agent(agent: str, binary: Path, upstream: str, out_dir: Path, args: argparse.Namespace) -> AgentRun:
    """One agent's scenario in a fresh scratch repo and HOME, through its own recording proxy."""
    out_dir.mkdir(parents=True, exist_ok=True)
    run = AgentRun(agent, out_dir / f"{agent}.jsonl")
    with tempfile.TemporaryDirectory(prefix=f"llamanode-{agent}-") as tmp:
        repo, home = scratch_repo(Path(tmp) / "repo"), Path(tmp) / "home"
        home.mkdir()
        with recording_proxy(upstream, run.recording, agent, args.max_output_tokens, args.force_tool_first) as url:
            if agent == "claude":
                steps = claude_steps(binary, url, args.turns, args.sessions)
            elif agent == "codex":
                codex_config(home / ".codex", url)
                steps = codex_steps(binary, home / ".codex", args.turns, args.sessions)
            else:
                steps = aider_steps(binary, url, args.aider_messages, aider_metadata(home, args.ctx))
            run.steps = run_steps(steps, repo, home, out_dir, agent, args.timeout)
    return run


def summarize(run: AgentRun) -> dict[str, object]:
    records = read_recording(run.recording) if run.recording.exists() else []
    return {
        "agent": run.agent,
        "recording": str(run.recording),
        "steps": run.steps,
        "requests": len(records),
        "statuses": sorted({r.get("status") for r in records}, key=str),
        "sessions": len({r.get("session") for r in records if r.get("api") != "other"}),
        "tool_calls_emitted": sum(len((r.get("reply") or {}).get("tool_calls") or []) for r in records),
        "tool_results_sent": sum(int(r.get("tool_results_in_request") or 0) for r in records),
    }


@contextmanager
def upstream_server(args: argparse.Namespace, out_dir: Path) -> Iterator[str]:
    """--upstream as given, or a server this script starts (and stops) with --threads and --ctx."""
    if args.upstream:
        yield args.upstream
        return
    from llamanode import default_model_path

    port = free_port()
    model = default_model_path()
    if args.serve == "llama-server":
        cmd = llama_server_cmd(model, port, args.threads, args.ctx)
    else:
        cmd = llamanode_serve_cmd(model, port, args.threads, args.ctx, out_dir / "store", "--alias", MODEL_NAME)
    with Server(args.serve, cmd, port, "/health") as server:
        server.start(out_dir, timeout=600)
        yield server.url


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--upstream", help="base URL of a running server")
    where.add_argument("--serve", choices=("llamanode", "llama-server"), help="start this server for the run")
    parser.add_argument("--agents", default=",".join(AGENTS), help=f"comma-separated subset of {','.join(AGENTS)}")
    parser.add_argument("--sessions", type=int, default=2, choices=(1, 2), help="sessions per agent (claude, codex)")
    parser.add_argument("--turns", type=int, default=2, help="agent invocations per session (claude, codex)")
    parser.add_argument("--aider-messages", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--max-output-tokens", type=int, default=128, help="proxy cap on output tokens (0: none)")
    parser.add_argument("--force-tool-first", action="store_true", help="proxy forces a tool call on session starts")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=32768, help="server window (YaRN beyond 8192)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per agent invocation")
    parser.add_argument("--out-dir", type=Path, default=None, help="default: bench/out/agents/<time>")
    args = parser.parse_args(argv)
    if args.max_output_tokens == 0:
        args.max_output_tokens = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir: Path = args.out_dir or OUT_DIR / "agents" / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    binaries = install_agents()
    summaries = []
    with ExitStack() as stack:
        upstream = stack.enter_context(upstream_server(args, out_dir))
        for agent in [a.strip() for a in args.agents.split(",") if a.strip()]:
            run = run_agent(agent, binaries[agent], upstream, out_dir, args)
            summaries.append(summarize(run))
            log(f"{agent}: {json.dumps(summaries[-1]['statuses'])} {summaries[-1]['requests']} requests")
    (out_dir / "scenarios.json").write_text(json.dumps(summaries, indent=2) + "\n")
    print(json.dumps(summaries, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
