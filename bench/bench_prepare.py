"""Data-layer scale test: `python run.py ... stage=prepare` on a large synthetic general corpus.

The requirement: a 1,000,000-example general corpus must prepare on a 2-core machine with peak
RSS under 4 GiB, and the time is reported. Run from the repository root with the project's venv
(nothing else should use the CPUs meanwhile):

    python bench/bench_prepare.py [--examples 1000000] [--seed 0] [--recipe alex_persona]
        [--general-ratio 10] [--budget-gib 4] [--skip-warm] [--keep-cache] [--regenerate]
        [--timeout SECONDS] [--json out.json] [KEY=VALUE ...]

Trailing KEY=VALUE arguments are extra Hydra overrides for both runs (e.g. data.clean.near_dedup=false).

1. Corpus. outputs/bench/prepare/general_<N>.jsonl, N chat examples
   {"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}: user 8-30 words, assistant
   20-120 words, Zipf-distributed over a seeded vocabulary of ~4,000 English-looking words
   (so no two clean examples are near-duplicates), with punctuation. Deliberate noise, so the
   cleaning filters have work and their counts can be checked against what was injected:
   ~1% exact copies of an earlier line, ~1% near copies (an earlier line with one assistant word
   changed), ~0.5% service messages as the assistant turn ("IMG_0042.jpg", a bare URL,
   "Alice joined the group", ...), ~0.5% empty assistant turns. Earlier lines are drawn from a
   reservoir sample over *all* earlier lines, so copies lie anywhere from one line to the whole
   file back. Written in chunks (never 1M dicts in memory) to a temp name and renamed; a sidecar
   .meta.json (N, seed, generator version, injected counts, size) lets a later run reuse it.

2. Config. No recipe file: Hydra overrides on the command line,
       recipe=alex_persona stage=prepare data.sources.general.path=<corpus>
       data.mix.general_ratio=10 hydra.run.dir=outputs/bench/prepare/runs/<N>_<time>_<cold|warm>
   (the niche source data/alex/dialogues.jsonl stays as the recipe has it). A recipe file would
   work too: run.py stages `recipe=path/x.yaml` as an option of the recipe group, so a file
   outside recipes/ with `defaults: [alex_persona, _self_]` inherits (checked with --cfg job).

3. Runs. Each `python run.py ...` is a subprocess (cwd = repository root), one after another:
     cold  RECIPE_RUNNER_CACHE = a fresh outputs/bench/prepare/cache-<time>; its models/ is a
           symlink to the models/ of the usual cache (converted first, outside the timing, if
           missing), so the one-off GGUF -> safetensors conversion (~20 s) is not measured;
     warm  the same cache again: cleaned/tokenized sources should be reused (data.cache).
   wall s       Popen -> exit, interpreter start and imports included;
   pipeline s   the run's own summary.json wall_seconds (checks -> manifest, imports excluded);
   peak RSS     ru_maxrss from os.wait4 on that child: the largest RSS of the child or of any
                descendant it waited for (exact, per process, not a sum);
   tree RSS     the sum of RSS over the child's whole process tree, sampled by psutil every
                0.2 s (catches concurrent worker processes; can miss short spikes; pages shared
                by forked workers count once per process, so with workers it is an upper bound);
   procs        the most processes seen at once in that tree (1 = no worker processes).
   The 4 GiB budget is checked against the larger of the two. Other processes' CPU use during a
   run is measured from /proc/stat and warned about: it skews the times.

Exit status: 1 if a prepare run fails (its stderr tail is shown), 3 if it ran but peak RSS broke
the budget, 0 otherwise. The cache folder is deleted afterwards unless --keep-cache. Each run
gets its own session (so a timeout can kill its whole tree); Ctrl-C on this script kills it too.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from machine import busy_cpu_seconds, cpu_seconds  # noqa: E402  (bench/ is the script folder)
BENCH = REPO / "outputs" / "bench" / "prepare"
GENERATOR_VERSION = 1
CHUNK = 8192  # examples generated per numpy draw
RESERVOIR = 50_000  # earlier clean examples kept as copy sources (uniform over all earlier lines)
NOISE = (("exact_duplicate", 0.01), ("near_duplicate", 0.01), ("service_message", 0.005), ("empty_turn", 0.005))

# ---------------------------------------------------------------- the synthetic corpus

COMMON = """the of and to a in is it you that he was for on are with as I his they be at one have this from or
had by not word but what some we can out other were all there when up use your how said an each she which do
their time if will way about many then them write would like so these her long make thing see him two has look
more day could go come did number sound no most people my over know water than call first who may down side
been now find any new work part take get place made live where after back little only round man year came show
every good me give our under name very through just form sentence great think say help low line differ turn
cause much mean before move right boy old too same tell does set three want air well also play small end put
home read hand port large spell add even land here must big high such follow act why ask men change went light
kind off need house picture try us again animal point mother world near build self earth father head stand own
page should country found answer school grow study still learn plant cover food sun four between state keep eye
never last let thought city tree cross farm hard start might story saw far sea draw left late run while press
close night real life few north open seem together next white children begin got walk example ease paper group
always music those both mark often letter until mile river car feet care second book carry took science eat room
friend began idea fish mountain stop once base hear horse cut sure watch color face wood main enough plain girl
usual young ready above ever red list though feel talk bird soon body dog family direct pose leave song measure
door product black short numeral class wind question happen complete ship area half rock order fire south problem
piece told knew pass since top whole king space heard best hour better true during hundred five remember step
early hold west ground interest reach fast verb sing listen six table travel less morning ten simple several
vowel toward war lay against pattern slow center love person money serve appear road map rain rule govern pull
cold notice voice unit power town fine certain fly fall lead cry dark machine note wait plan figure star box noun
field rest correct able pound done beauty drive stood contain front teach week final gave green quick develop
ocean warm free minute strong special mind behind clear tail produce fact street inch multiply nothing course stay
wheel full force blue object decide surface deep moon island foot system busy test record boat common gold
possible plane dry wonder laugh thousand ago ran check game shape equate miss brought heat snow tire bring yes
distant fill east paint language among server network deploy cluster config latency backup release""".split()
ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z", "br", "cl",
          "cr", "dr", "fl", "fr", "gl", "gr", "pl", "pr", "sc", "sl", "sp", "st", "tr", "sh", "ch", "th", "wh", ""]
VOWELS = ["a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ea", "ou", "io", "ee", "oo", "y"]
CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "nd", "st", "ng", "ck", "rt", "nt", "sh"]
SUFFIXES = ["", "", "", "", "", "", "", "ing", "ed", "er", "ly", "tion", "ment", "ness", "able", "s"]
NAMES = ["Alice", "Bob", "Carol", "Dmitri", "Eve", "Farah", "Greg", "Hana", "Ivan", "Jun", "Kemal", "Lena"]


def make_vocab(size: int, rng: np.random.Generator) -> list[str]:
    """COMMON English words first (they get the high Zipf ranks), then seeded pseudo-words."""
    words, seen = [], set()
    for w in COMMON:
        if w not in seen:
            seen.add(w)
            words.append(w)
    while len(words) < size:
        n = int(rng.choice([1, 2, 2, 2, 3]))
        w = "".join(ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] +
                    (CODAS[rng.integers(len(CODAS))] if i == n - 1 else "") for i in range(n))
        w += SUFFIXES[rng.integers(len(SUFFIXES))]
        if 2 <= len(w) <= 14 and w not in seen:
            seen.add(w)
            words.append(w)
    return words


class Corpus:
    """Word stream -> texts. Token table: 8 forms per word = {lower, Capitalised} x {'', ',', '.', '?'}."""

    def __init__(self, seed: int, vocab_size: int = 4000):
        self.rng = np.random.default_rng(seed)
        self.vocab = make_vocab(vocab_size, self.rng)
        v = len(self.vocab)
        weights = 1.0 / (np.arange(v) + 2.7) ** 1.07  # Zipf-like: "the" ~6%, the tail ~1e-5
        self.cdf = np.cumsum(weights / weights.sum())
        self.cdf[-1] = 1.0
        forms = []
        for w in self.vocab:
            cap = w[0].upper() + w[1:]
            forms.append([w, w + ",", w + ".", w + "?", cap, cap + ",", cap + ".", cap + "?"])
        self.table = np.array(forms, dtype=object).reshape(-1)

    def texts(self, lengths: np.ndarray, questions: np.ndarray) -> list[str]:
        """One text per length; a text ends with '?' where `questions`, else '.'; sentences of ~11 words."""
        total = int(lengths.sum())
        idx = np.searchsorted(self.cdf, self.rng.random(total), side="right")
        r = self.rng.random(total)
        punct = np.where(r < 1 / 11, 2, np.where(r < 1 / 11 + 1 / 13, 1, 0))  # period, comma, none
        ends = np.cumsum(lengths) - 1
        starts = ends - lengths + 1
        punct[ends] = np.where(questions, 3, 2)
        cap = np.zeros(total, dtype=bool)
        cap[1:] = punct[:-1] >= 2  # a word after '.' or '?' starts a sentence
        cap[starts] = True
        toks = self.table[idx * 8 + cap * 4 + punct].tolist()
        return [" ".join(toks[s : e + 1]) for s, e in zip(starts.tolist(), ends.tolist())]

    def word(self) -> str:
        return self.vocab[int(np.searchsorted(self.cdf, self.rng.random(), side="right"))]


def service_message(rng: np.random.Generator, corpus: Corpus) -> str:
    k, n = int(rng.integers(7)), int(rng.integers(10_000))
    name = NAMES[int(rng.integers(len(NAMES)))]
    return [f"IMG_{n:04d}.jpg", "photo.jpg", f"https://example.com/{corpus.word()}/{n}",
            f"{name} joined the group", f"{name} left the chat", f"scan_{n}.pdf", "<Media omitted>"][k]


def change_one_word(text: str, rng: np.random.Generator, corpus: Corpus) -> str:
    words = text.split(" ")
    i = int(rng.integers(1, len(words) - 1))  # not the first or last word: keep the punctuation frame
    tail = words[i][-1] if words[i][-1] in ",.?" else ""
    new = corpus.word()
    while new == words[i].rstrip(",.?").lower():
        new = corpus.word()
    words[i] = new + tail
    return " ".join(words)


def generate(path: Path, n: int, seed: int) -> dict:
    """Write the corpus to a temp name, then rename it; return what was injected."""
    corpus = Corpus(seed)
    rng = corpus.rng
    reservoir: list[tuple[str, str]] = []
    seen_clean = 0
    counts = {"clean": 0, **{k: 0 for k, _ in NOISE}}
    bounds = np.cumsum([p for _, p in NOISE])
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", buffering=1 << 20) as fh:
            for start in range(0, n, CHUNK):
                m = min(CHUNK, n - start)
                lengths = np.empty(2 * m, dtype=np.int64)
                lengths[0::2] = rng.integers(8, 31, m)  # user
                lengths[1::2] = rng.integers(20, 121, m)  # assistant
                questions = np.zeros(2 * m, dtype=bool)
                questions[0::2] = rng.random(m) < 0.7  # most user turns are questions
                texts = corpus.texts(lengths, questions)
                kinds = np.searchsorted(bounds, rng.random(m), side="right")  # 0..3 noise, 4 clean
                picks = rng.random(m)
                lines = []
                for j in range(m):
                    user, reply = texts[2 * j], texts[2 * j + 1]
                    kind = int(kinds[j]) if reservoir or kinds[j] >= 2 else len(NOISE)
                    if kind == 0:  # exact copy of an earlier line
                        user, reply = reservoir[int(picks[j] * len(reservoir))]
                    elif kind == 1:  # an earlier line, one assistant word changed
                        user, reply = reservoir[int(picks[j] * len(reservoir))]
                        reply = change_one_word(reply, rng, corpus)
                    elif kind == 2:
                        reply = service_message(rng, corpus)
                    elif kind == 3:
                        reply = "" if picks[j] < 0.7 else " "
                    else:  # clean: reservoir sampling over every clean line so far
                        if len(reservoir) < RESERVOIR:
                            reservoir.append((user, reply))
                        elif (r := int(rng.integers(seen_clean + 1))) < RESERVOIR:
                            reservoir[r] = (user, reply)
                        seen_clean += 1
                    counts["clean" if kind == len(NOISE) else NOISE[kind][0]] += 1
                    lines.append(json.dumps({"messages": [{"role": "user", "content": user},
                                                          {"role": "assistant", "content": reply}]}) + "\n")
                fh.writelines(lines)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return counts


def corpus_file(n: int, seed: int, regenerate: bool) -> tuple[Path, dict]:
    BENCH.mkdir(parents=True, exist_ok=True)
    path, meta_path = BENCH / f"general_{n}.jsonl", BENCH / f"general_{n}.meta.json"
    want = {"examples": n, "seed": seed, "generator_version": GENERATOR_VERSION}
    if not regenerate and path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in want} == want and meta.get("bytes") == path.stat().st_size:
            print(f"[bench] reusing {path.relative_to(REPO)} ({meta['bytes'] / 2**20:,.1f} MB, seed {seed}; "
                  f"generated in {meta['generate_seconds']:.1f} s)", flush=True)
            return path, meta
    meta_path.unlink(missing_ok=True)
    print(f"[bench] generating {n:,} examples (seed {seed}) -> {path.relative_to(REPO)}", flush=True)
    t0 = time.perf_counter()
    counts = generate(path, n, seed)
    secs = time.perf_counter() - t0
    meta = {**want, "bytes": path.stat().st_size, "generate_seconds": secs, "injected": counts}
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, meta_path)
    print(f"[bench] wrote {meta['bytes'] / 2**20:,.1f} MB in {secs:.1f} s ({n / secs:,.0f} examples/s); "
          f"injected: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), flush=True)
    return path, meta


# ---------------------------------------------------------------- measuring one prepare run

def tree_rss(proc) -> tuple[int, int]:
    """(RSS summed over proc and its descendants, number of processes)."""
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total, len(procs)


def last_lines(path: Path, n: int) -> str:
    """The last n lines of a log, each progress-bar line (\\r updates) reduced to its final state."""
    data = path.read_bytes()[-200_000:].decode("utf-8", "replace")
    lines = [ln.rsplit("\r", 1)[-1] for ln in data.split("\n")]
    return "\n".join([ln for ln in lines if ln.strip()][-n:])


def run_prepare(label: str, cmd: list[str], env: dict, run_dir: Path, timeout: float | None) -> dict:
    try:
        import psutil
    except ImportError:
        psutil = None
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    out_log, err_log = run_dir.with_name(run_dir.name + ".stdout.log"), run_dir.with_name(run_dir.name + ".stderr.log")
    print(f"[bench] {label}: {' '.join(cmd[1:])}", flush=True)
    busy0, self0 = busy_cpu_seconds(), cpu_seconds()
    started = time.perf_counter()
    with open(out_log, "wb") as out, open(err_log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err, start_new_session=True)
    ps = psutil.Process(proc.pid) if psutil else None
    tree_peak, tree_procs, timed_out = 0, 0, False
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if ps is not None:
                rss, count = tree_rss(ps)
                tree_peak, tree_procs = max(tree_peak, rss), max(tree_procs, count)
            if timeout and time.perf_counter() - started > timeout and not timed_out:
                timed_out = True
                os.killpg(proc.pid, 9)  # the session this script started for the run (start_new_session)
            time.sleep(0.2)
    except BaseException:  # Ctrl-C: the run is in its own session, so the terminal's SIGINT never reached it
        os.killpg(proc.pid, 9)
        os.waitpid(proc.pid, 0)
        proc.returncode = -9
        raise
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    child_cpu = usage.ru_utime + usage.ru_stime
    others = max(0.0, (busy_cpu_seconds() - busy0 - child_cpu - (cpu_seconds() - self0)) / wall)
    res = {"label": label, "rc": proc.returncode, "timed_out": timed_out, "wall_s": wall,
           "peak_rss_mb": usage.ru_maxrss / 1024, "tree_rss_mb": tree_peak / 2**20 if ps is not None else None,
           "tree_max_procs": tree_procs if ps is not None else None,
           "cpu_s": child_cpu, "other_cpu_cores": others, "run_dir": str(run_dir),
           "stdout_log": str(out_log), "stderr_log": str(err_log)}
    summary = run_dir / "summary.json"
    if summary.exists():
        res["summary"] = json.loads(summary.read_text())
    return res


def dir_mb(path: Path) -> float:
    """Size of the files under path; symlinks (the shared models/) are neither followed nor counted."""
    total = 0
    for root, _, files in os.walk(path):  # followlinks=False
        for f in files:
            fp = os.path.join(root, f)
            if not os.path.islink(fp):
                total += os.path.getsize(fp)
    return total / 2**20


def prepare_cache(cache: Path, model_name: str, env: dict) -> None:
    """A fresh cache whose models/ points at the usual cache's converted models (converted now if missing)."""
    from recipe_runner.model.embedded import PREFIX

    cache.mkdir(parents=True)
    if not model_name.startswith(PREFIX):
        return
    usual = Path(os.path.expanduser(os.environ.get("RECIPE_RUNNER_CACHE", "~/.cache/recipe-runner"))).resolve()
    name = model_name[len(PREFIX):]
    if not (usual / "models" / name / "model.safetensors").exists():
        print(f"[bench] converting {model_name} into {usual} first (not timed)", flush=True)
        code = ("import sys; sys.path.insert(0, 'src'); from recipe_runner.model.embedded import resolve_model_path; "
                f"resolve_model_path({model_name!r}, {str(usual)!r})")
        subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True)
    (cache / "models").symlink_to(usual / "models", target_is_directory=True)


# ---------------------------------------------------------------- report

def print_runs(results: list[dict], n: int, file_mb: float) -> None:
    cols = ["run", "examples", "file MB", "wall s", "pipeline s", "peak RSS MB", "tree RSS MB", "procs", "examples/s",
            "child CPU s", "other cores", "cache MB"]
    rows = [cols]
    for r in results:
        pipe = r.get("summary", {}).get("wall_seconds")
        ok = r["rc"] == 0
        rows.append([r["label"] + ("" if ok else " FAILED"), f"{n:,}", f"{file_mb:,.1f}", f"{r['wall_s']:.1f}",
                     f"{pipe:.1f}" if pipe is not None else "-", f"{r['peak_rss_mb']:,.0f}",
                     f"{r['tree_rss_mb']:,.0f}" if r["tree_rss_mb"] is not None else "-",
                     str(r["tree_max_procs"]) if r["tree_max_procs"] is not None else "-",
                     f"{n / r['wall_s']:,.0f}" if ok else "-", f"{r['cpu_s']:.1f}", f"{r['other_cpu_cores']:.2f}",
                     f"{r.get('cache_data_mb', 0):,.1f}"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def print_cleaning(run_dir: Path, source: str, injected: dict) -> None:
    """The run's mix.md, then what cleaning dropped from the synthetic source next to what was injected."""
    mix_md = run_dir / "mix.md"
    if mix_md.exists():
        print(f"\n{mix_md.relative_to(REPO)}:")
        print(mix_md.read_text().rstrip())
    mix_csv = run_dir / "mix.csv"
    if not mix_csv.exists():
        return
    with open(mix_csv, newline="") as fh:
        row = next((r for r in csv.DictReader(fh) if r.get("source") == source), None)
    if row is None:
        return
    print(f"\ncleaning of source {source!r}: dropped by the run vs injected by the generator")
    for name, _ in NOISE:
        got = row.get(f"cleaned_{name}")
        print(f"  {name:<16} dropped {got if got is not None else '(no such filter column)':>8}   "
              f"injected {injected.get(name, 0):>8,}")
    extra = {k[len('cleaned_'):]: v for k, v in row.items()
             if k.startswith("cleaned_") and k[len('cleaned_'):] not in dict(NOISE) and v not in ("0", "")}
    if extra:
        print("  other filters: " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    for k in ("train_examples", "val_examples", "contaminated", "dropped_too_long", "bad_lines"):
        if k in row:
            print(f"  {k:<16} {row[k]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=1_000_000, help="general corpus size (default 1,000,000)")
    p.add_argument("--seed", type=int, default=0, help="corpus generator seed")
    p.add_argument("--recipe", default="alex_persona",
                   help="recipe name (recipes/NAME.yaml) whose general source is replaced")
    p.add_argument("--source", default="general", help="name of the recipe's general source to point at the corpus")
    p.add_argument("--general-ratio", type=float, default=10, help="data.mix.general_ratio")
    p.add_argument("--budget-gib", type=float, default=4.0, help="peak RSS budget")
    p.add_argument("--skip-warm", action="store_true", help="only the cold run")
    p.add_argument("--keep-cache", action="store_true", help="keep the fresh cache folder afterwards")
    p.add_argument("--regenerate", action="store_true", help="write the corpus again even if a matching one exists")
    p.add_argument("--timeout", type=float, default=0, help="kill a prepare run after this many seconds (0 = never)")
    p.add_argument("--json", help="also write the results here")
    a, overrides = p.parse_known_args()
    if any(o.startswith("-") or "=" not in o for o in overrides):
        p.error(f"unknown arguments: {overrides} (extra Hydra overrides are KEY=VALUE)")
    if a.examples < 1:
        p.error("--examples must be positive")
    json_out = Path(a.json).resolve() if a.json else None
    os.chdir(REPO)

    path, meta = corpus_file(a.examples, a.seed, a.regenerate)
    file_mb = meta["bytes"] / 2**20

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    cache = BENCH / f"cache-{stamp}"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "RECIPE_RUNNER_CACHE": str(cache)}
    base = [f"recipe={a.recipe}", "stage=prepare", f"data.sources.{a.source}.path={path}",
            f"data.mix.general_ratio={a.general_ratio:g}", *overrides]

    from hydra import compose, initialize_config_dir
    from recipe_runner.config.schema import register

    register()  # the composed config names the model (for the cache) and proves the overrides compose
    with initialize_config_dir(version_base="1.3", config_dir=str(REPO / "conf")):
        cfg = compose("config", overrides=[o for o in base if not o.startswith("hydra.")])
    src = cfg.data.sources[a.source]
    role, fmt = getattr(src.role, "value", src.role), getattr(src.format, "value", src.format)
    print(f"[bench] recipe {cfg.name}: source {a.source!r} (role {role}, {fmt}) -> corpus; "
          f"others: {', '.join(f'{k} {v.path}' for k, v in cfg.data.sources.items() if k != a.source) or 'none'}; "
          f"general_ratio {cfg.data.mix.general_ratio}; data.cache {cfg.data.get('cache', '(no such key)')}")
    prepare_cache(cache, cfg.model.name_or_path, env)

    results, status, failed = [], 0, None
    try:
        for label in ("cold", "warm")[: 1 if a.skip_warm else 2]:
            run_dir = BENCH / "runs" / f"{a.examples}_{stamp}_{label}"
            cmd = [sys.executable, str(REPO / "run.py"), *base, f"hydra.run.dir={run_dir}"]
            r = run_prepare(label, cmd, env, run_dir, a.timeout or None)
            r["cache_data_mb"] = dir_mb(cache)  # models/ is a symlink: not counted
            results.append(r)
            if r["rc"] != 0:
                print(f"[bench] {label} run FAILED after {r['wall_s']:.1f} s (stderr tail at the end)", flush=True)
                failed, status = r, 1
                break
            print(f"[bench] {label}: {r['wall_s']:.1f} s, peak RSS {r['peak_rss_mb']:,.0f} MB, "
                  f"run folder {run_dir.relative_to(REPO)}", flush=True)
    finally:
        cache_mb = dir_mb(cache)
        if a.keep_cache:
            print(f"[bench] cache kept: {cache.relative_to(REPO)} ({cache_mb:,.1f} MB without models/)")
        else:
            shutil.rmtree(cache, ignore_errors=True)

    print()
    print(f"recipe {a.recipe}, general corpus {path.relative_to(REPO)} ({a.examples:,} examples, "
          f"{file_mb:,.1f} MB, seed {a.seed}), general_ratio {a.general_ratio:g}, "
          f"extra overrides: {overrides or 'none'}")
    print_runs(results, a.examples, file_mb)
    by = {r["label"]: r for r in results}
    peak = max([max(r["peak_rss_mb"], r["tree_rss_mb"] or 0) for r in results], default=0.0)
    budget = a.budget_gib * 1024
    ok = status == 0 and peak < budget
    print()
    head = ["examples", "file MB", "cold wall s", "cold peak RSS MB", "warm wall s", "warm peak RSS MB",
            "examples/s", f"< {a.budget_gib:g} GiB"]
    cold, warm = by.get("cold"), by.get("warm")
    vals = [f"{a.examples:,}", f"{file_mb:,.1f}",
            f"{cold['wall_s']:.1f}" if cold else "-", f"{cold['peak_rss_mb']:,.0f}" if cold else "-",
            f"{warm['wall_s']:.1f}" if warm else "-", f"{warm['peak_rss_mb']:,.0f}" if warm else "-",
            f"{a.examples / cold['wall_s']:,.0f}" if cold and cold["rc"] == 0 else "-",
            ("PASS" if ok else "FAIL") + (f" ({peak:,.0f} MB)" if results else "")]
    widths = [max(len(h), len(v)) for h, v in zip(head, vals)]
    print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
    print("  ".join("-" * w for w in widths))
    print("  ".join(v.rjust(w) for v, w in zip(vals, widths)))

    if busy := {r["label"]: round(r["other_cpu_cores"], 2) for r in results if r["other_cpu_cores"] > 0.1}:
        print(f"WARNING: other processes used the CPUs during these runs (cores of {os.cpu_count()}): {busy}; "
              "those times are skewed: rerun on an idle machine")
    for r in results:
        print(f"\n{r['label']} run folder: {Path(r['run_dir']).relative_to(REPO)}  (logs: *.stdout.log, *.stderr.log)")
        if s := r.get("summary"):
            print("  summary.json: " + ", ".join(
                f"{k} {v[:16] + '...' if isinstance(v, str) and len(v) > 40 else v}" for k, v in s.items()
                if k not in ("run_dir",)))
    if cold and cold["rc"] == 0 and warm and warm["rc"] == 0 and cold.get("summary") and warm.get("summary"):
        same = cold["summary"].get("manifest_sha256") == warm["summary"].get("manifest_sha256")
        print(f"\ncold and warm manifests {'identical' if same else 'DIFFER'}")
    if results and results[0]["rc"] == 0:
        print_cleaning(Path(results[0]["run_dir"]), a.source, meta.get("injected", {}))

    if json_out:
        json_out.write_text(json.dumps({"examples": a.examples, "seed": a.seed, "file_mb": file_mb,
                                        "corpus": str(path), "injected": meta.get("injected"),
                                        "overrides": base, "budget_mb": budget, "peak_rss_mb": peak,
                                        "pass": ok, "runs": results}, indent=2, default=str))
    if failed:
        why = f"timed out after {a.timeout:.0f} s" if failed["timed_out"] else f"exit code {failed['rc']}"
        sys.stdout.flush()
        print(f"\n[bench] {failed['label']} run FAILED ({why}) after {failed['wall_s']:.1f} s, peak RSS "
              f"{failed['peak_rss_mb']:,.0f} MB; stderr tail ({failed['stderr_log']}):", file=sys.stderr)
        print(last_lines(Path(failed["stderr_log"]), 40), file=sys.stderr)
        return status
    return 0 if ok else 3


if __name__ == "__main__":
    sys.exit(main())
