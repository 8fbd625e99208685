"""Issue 24's attacks on shared recipes, as a victim runs them: what `python run.py` answers, how soon.

    python bench/shared_recipe_refusals.py             # each case once
    python bench/shared_recipe_refusals.py --repeat 3  # median of 3 runs each

Each case is a downloaded recipe run with `stage=prepare` (or as is), a fake key in MY_SECRET and
a dead endpoint on 127.0.0.1:9. Prints the exit code (2: refused), the seconds from the command to
its exit, and the start of the `error:` line. The last row is the default recipe's `--cfg job`:
the cost of the checks on a command that passes them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
H = "# @package _global_\n"
BASE = "defaults:\n  - alex_persona_cpu\n  - _self_\nname: a\n"


def cases(tmp: Path) -> dict[str, str]:
    settings = tmp / "settings.yaml"
    settings.write_text(H + "hydra:\n  callbacks:\n    x:\n      _target_: pandas.read_pickle\n"
                            "      filepath_or_buffer: /nonexistent.pkl\n")
    walk = "/" + os.path.relpath(settings.with_suffix(""), REPO / "conf")
    bomb = [H + "a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return {
        "blank line, then header: judge": "\n" + H + BASE + "eval:\n  judge:\n    enabled: true\n"
                                          "    base_url: http://127.0.0.1:9/v1\n    api_key_env: MY_SECRET\n",
        "indented header: stage + generator": "  " + H + "name: a\nstage: synthesize\nsynth:\n  generator:\n"
                                              "    base_url: http://127.0.0.1:9/v1\n    model: m\n",
        "second @package wins: env_set": "# @package recipe\n" + H + "name: a\nhydra:\n  job:\n    env_set:\n"
                                         "      WANDB_MODE: online\n",
        "defaults entry out of conf/": H + f"defaults:\n  - alex_persona_cpu\n  - {walk}\n  - _self_\nname: a\n",
        "interpolated resolver name": H + BASE + "data:\n  placeholders:\n    x: env\n"
                                      "description: \"${oc.${data.placeholders.x}:MY_SECRET}\"\n",
        "alias bomb (1 KB)": "\n".join(bomb) + "\n",
        "~/.aws/credentials as data": H + BASE + "data:\n  sources:\n    c:\n      path: ~/.aws/credentials\n"
                                      "      format: text\n",
        "serve.host: 0.0.0.0": H + "name: a\nserve:\n  host: 0.0.0.0\n",
    }


def run(args: list[str]) -> tuple[int, float, str]:
    env = {**os.environ, "MY_SECRET": "sk-fake", "HYDRA_FULL_ERROR": "0"}
    started = time.perf_counter()
    res = subprocess.run([sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    return res.returncode, seconds, (res.stderr.strip().splitlines() or [""])[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="shared-recipe-bench-"))
    out = tmp / "out"
    print(f"{'case':38} {'exit':>4} {'seconds':>8}  answer")
    for name, text in cases(tmp).items():
        recipe = tmp / f"{abs(hash(name))}.yaml"
        recipe.write_text(text)
        runs = [run([f"recipe={recipe}", "stage=prepare", f"paths.output_dir={out}"]) for _ in range(args.repeat)]
        code, _, answer = runs[-1]
        print(f"{name:38} {code:>4} {statistics.median(r[1] for r in runs):8.2f}  {answer[:110]}")
    runs = [run(["--cfg", "job"]) for _ in range(args.repeat)]
    print(f"{'default recipe, --cfg job (passes)':38} {runs[-1][0]:>4} {statistics.median(r[1] for r in runs):8.2f}")
    print(f"nothing written: {not out.exists()}")


if __name__ == "__main__":
    main()
