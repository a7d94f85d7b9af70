"""Choose a recovery recipe with the proxy, never with `dev` (issue 30, item 3).

`calib` is split in two: every `--hold-every`-th clip is held out for the proxy (the original transcribes them
with the one decoder; each variant is scored by its mean next-token KL from the original on those transcripts,
`evaluation/proxy.py`); the model is compressed on the other clips, once, and each recipe then refines a copy of
that student on windows drawn from its `audio` (the fit clips, built-in synthetic clips, folders). One JSON line
per recipe is appended to `--out` (recipes already there are skipped: the run resumes); `--save DIR` also writes
each student as a lite-whisper checkpoint for a later `dev` check.

    PYTHONPATH=src python benchmarks/recovery.py tiny.en --size 0.7 --out runs/recovery-tiny.jsonl \\
        --recipe base-100:steps=100 --recipe synth-200:steps=200,windows=266,audio=synthetic:200

A recipe is NAME:key=value,... with keys steps, lr, warmup, clip, windows, pull, ce, hidden, batch, audio (audio: '+'-
joined sources: fit (the fit clips, default), synthetic:N, or a folder/manifest); unset keys take the recipe
`compress` documents (lr 1e-5, warm-up 0.1, clipping 1.0, decoder objective).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = dict(
    steps=100, lr=1e-5, warmup=0.1, clip=1.0, windows=100, pull=0.0, ce=1.0, hidden=0.0, batch=2, audio="fit"
)


def parse_recipe(spec: str) -> tuple[str, dict]:
    name, _, body = spec.partition(":")
    recipe = dict(DEFAULTS)
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in DEFAULTS:
            raise SystemExit(f"recipe {name}: unknown key {key!r} (known: {', '.join(DEFAULTS)})")
        recipe[key] = value if key == "audio" else type(DEFAULTS[key])(float(value))
    return name, recipe


def split_calib(data: Path, hold_every: int) -> tuple[list, list]:
    """(fit clips as paths, held-out clips as 16 kHz arrays) of the `calib` split."""
    from litewhisper.audio.load import load_audio

    rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["split"] == "calib" and r["duration_s"] <= 30]
    held = [load_audio(str(data.parent / r["path"])) for r in rows[::hold_every]]
    fit = [str(data.parent / r["path"]) for i, r in enumerate(rows) if i % hold_every]
    return fit, held


def recipe_audio(spec: str, fit: list) -> list:
    from litewhisper.audio.datasets import discover_audio
    from litewhisper.audio.synth import builtin_calibration_audio

    clips: list = []
    for source in spec.split("+"):
        if source == "fit":
            clips += fit
        elif source.startswith("synthetic:"):
            clips += builtin_calibration_audio(int(source.partition(":")[2]))
        else:
            clips += discover_audio(source)
    return clips


def cache_transcripts(recovery) -> None:
    """Recipes refine on the same windows: transcribe each set of windows once."""
    original, cache = recovery.window_transcripts, {}

    def cached(bundle, windows, transcriber):
        key = recovery.windows_key(windows)
        if key not in cache:
            cache[key] = original(bundle, windows, transcriber)
        return cache[key]

    recovery.window_transcripts = cached


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--size", type=float, default=0.7)
    p.add_argument("--recipe", action="append", default=[], help="NAME:key=value,... (see above)")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "manifest.jsonl")
    p.add_argument("--hold-every", type=int, default=3)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--save", type=Path, default=None)
    args = p.parse_args()

    from litewhisper.compression import api, recovery
    from litewhisper.compression.policy import SizeBudget
    from litewhisper.compression.refine import RefineConfig
    from litewhisper.decode.transcribe import transcribe
    from litewhisper.evaluation.proxy import proxy_kl, teacher_reference
    from litewhisper.models.checkpoint import save_checkpoint
    from litewhisper.models.load import load_model

    done = {json.loads(line)["recipe"] for line in args.out.read_text().splitlines()} if args.out.exists() else set()
    recipes = [parse_recipe(s) for s in args.recipe]
    bundle = load_model(args.model)
    fit, held = split_calib(args.data, args.hold_every)
    cache_transcripts(recovery)
    start = time.perf_counter()
    compressed = api.compress(bundle, fit, SizeBudget(args.size))
    print(f"compressed on {len(fit)} clips in {time.perf_counter() - start:.0f} s: {compressed.summary()}")
    reference = teacher_reference(bundle, held)
    baseline = proxy_kl(reference, compressed.bundle).kl
    print(f"proxy on {len(held)} held-out calib clips; no recovery: {baseline:.4f}")
    if args.save and not (args.save / "none").is_dir():
        save_checkpoint(compressed.bundle, args.save / "none", overwrite=True)
    for name, recipe in recipes:
        if name in done:
            continue
        student = copy.deepcopy(compressed.bundle)
        config = RefineConfig(
            objective="decoder",
            max_steps=recipe["steps"],
            lr=recipe["lr"],
            warmup=recipe["warmup"],
            max_grad_norm=recipe["clip"] or None,
            windows=recipe["windows"],
            pull=recipe["pull"],
            ce_weight=recipe["ce"],
            hidden_weight=recipe["hidden"],
            batch_size=recipe["batch"],
            eval_every=10,
            patience=1000,  # keep the best state seen, but run every step
        )
        audio = recipe_audio(recipe["audio"], fit)
        result = recovery.recover(bundle, student.model, bundle.model, audio, config, transcriber=transcribe)
        kl = proxy_kl(reference, student).kl
        line = dict(recipe=name, size=args.size, proxy=kl, baseline=baseline, **recipe)
        line.update({k: v for k, v in asdict(result).items() if k != "train_losses"})
        with args.out.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(
            f"{name}: proxy {kl:.4f} (held-out loss {result.initial_val:.4f} -> {result.best_val:.4f} at step "
            f"{result.best_step}, moved {result.moved:.2g}, {result.seconds / 60:.1f} min)"
        )
        if args.save:
            save_checkpoint(student, args.save / name, overwrite=True)


if __name__ == "__main__":
    main()
