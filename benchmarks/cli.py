"""`python -m benchmarks`: bring up the bench lab, run the cases, print the table, write the JSON."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from .agent import agent as agent_case
from .cases import CASES, Context, Sizes

CASES = {**CASES, "agent": agent_case}
from .env import DEFAULT_LAB, DEFAULT_REGISTRY_PORT, REPO, BenchEnv, default_home
from .measure import BenchError
from .report import machine, markdown_table, print_table, write_json


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="sshexec against OpenSSH + docker (and Ansible): paired, interleaved A/B runs on a lab of its own.",
    )
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES), metavar="CASE", help=f"which cases (default all: {' '.join(CASES)})")
    p.add_argument("--quick", action="store_true", help="small sizes (4-worker fan-out, 10 MiB, 100k lines, 8-worker check) and 3 rounds")
    p.add_argument("--repeat", type=int, help="timed rounds per case, after the warm-up rounds (default 5, --quick 3)")
    p.add_argument("--warmup", type=int, default=1, metavar="N",
                   help="untimed warm-up rounds before the timed ones (default 1; 0 only to check that the cases run, as the smoke test does)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=N", help="override a size: " + ", ".join(f.name for f in dataclasses.fields(Sizes)))
    p.add_argument("--json", type=Path, help="where to write the raw figures (default benchmarks/results/<timestamp>.json)")
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown to this file")
    p.add_argument("--no-ansible", action="store_true", help="skip the Ansible baseline of the fan-out case (no PyPI install)")
    p.add_argument("--down", action="store_true", help="take the bench lab down at the end (default: keep it up for the next run)")
    p.add_argument("--lab-name", default=DEFAULT_LAB, help=f"lab instance to use (default {DEFAULT_LAB})")
    p.add_argument("--lab-home", type=Path, help="that lab's state directory (default ~/.local/share/sshexec/LAB_NAME)")
    p.add_argument("--registry-port", type=int, default=DEFAULT_REGISTRY_PORT, help=f"that lab's registry port (default {DEFAULT_REGISTRY_PORT})")
    p.add_argument("--daemon-per-worker", action="store_true", default=None,
                   help="a Docker daemon per lab worker (default: a lab that exists stays as it is; a new one shares the host's, as 50 workers need)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines, only the table")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE.json", "AFTER.json"), help="run nothing: print how the ratios changed between two result files")
    args = p.parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in {f.name for f in dataclasses.fields(Sizes)} or not value.isdigit() or int(value) < 1:
            p.error(f"--set {item}: expected KEY=N with KEY one of {', '.join(f.name for f in dataclasses.fields(Sizes))}")
        setattr(sizes, key, int(value))
    args.sizes = sizes
    args.repeat = args.repeat or (3 if args.quick else 5)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from rich.console import Console
    from rich.markup import escape

    if args.compare:
        return compare_files(*args.compare)

    console = Console(stderr=True)

    def log(msg: str) -> None:
        if not args.quiet:
            console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {escape(msg)}", highlight=False)

    started = time.time()
    env = BenchEnv(name=args.lab_name, home=args.lab_home or default_home(args.lab_name), registry_port=args.registry_port, log=log,
                   shared_daemon=None if args.daemon_per_worker is None else False)  # fmt: skip
    ansible = None
    results = []
    try:
        need = max([1] + [args.sizes.fanout for c in args.cases if c in ("fanout", "agent")] + [args.sizes.scale for c in args.cases if c == "scale"])
        env.up(need, internal=args.sizes.bastion if "bastion" in args.cases else 1)
        if "fanout" in args.cases and not args.no_ansible:
            from .ansible import Ansible

            ansible = Ansible(env, log=log)
        ctx = Context(env=env, sizes=args.sizes, repeat=args.repeat, log=log, ansible=ansible, warmup=args.warmup)
        for name in args.cases:
            log(f"case {name}")
            results.append(CASES[name](ctx))
    except BenchError as exc:
        console.print(f"[red]benchmark failed:[/] {exc}", highlight=False)
        return 1
    finally:
        if ansible is not None:
            ansible.close()
        env.close()
        if args.down:
            log("taking the bench lab down (--down)")
            env.lab.down()
    info = machine()
    config = {"cases": args.cases, "repeat": args.repeat, "warmup": args.warmup, "quick": args.quick, "sizes": dataclasses.asdict(args.sizes),
              "lab": args.lab_name, "ansible": not args.no_ansible, "elapsed_s": round(time.time() - started, 1)}  # fmt: skip
    out = args.json or REPO / "benchmarks" / "results" / (time.strftime("%Y%m%d-%H%M%S") + ".json")
    write_json(out, results, config, info)
    print_table(results, Console(width=None if sys.stdout.isatty() else 180))
    print(f"{info['uname']} · {info['cpus']} CPUs · {info['date']} · {args.repeat} rounds · raw figures: {out}")
    if args.markdown:
        args.markdown.write_text(markdown_table(results))
    return 0


def compare_files(before: Path, after: Path) -> int:
    import json

    from rich.console import Console

    from .report import compare, print_comparison

    docs = []
    for path in (before, after):
        try:
            docs.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            print(f"python -m benchmarks --compare: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    print_comparison(compare(*docs), str(before), str(after), Console(width=None if sys.stdout.isatty() else 180))
    return 0


if __name__ == "__main__":
    sys.exit(main())
