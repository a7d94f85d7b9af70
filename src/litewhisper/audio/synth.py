"""Built-in calibration audio: English sentences synthesised with eSpeak NG, for machines with no speech data.

eSpeak NG comes from the `espeakng-loader` wheel (it bundles libespeak-ng and its data) and is driven through
ctypes in synchronous mode with a synth callback. Synthesis runs in a short-lived child process: libespeak-ng
keeps state between utterances (the waveform differs from one call to the next in the same process), so a
fresh process per request makes the clips identical on every run, and a crash in the C library cannot take
the caller down. Clips vary voice, speed, pitch, pitch range, loudness and a faint noise floor.

In-domain speech calibrates better; this set exists so that `litewhisper compress MODEL -o OUT` works anywhere.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from litewhisper.constants import SAMPLE_RATE
from litewhisper.errors import CalibrationError

__all__ = ["DEFAULT_CLIPS", "SENTENCES", "VOICES", "VARIANTS", "SynthClip", "clip_plan", "builtin_calibration_audio"]

log = logging.getLogger("litewhisper")

DEFAULT_CLIPS = 48

SENTENCES = (
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her Wednesday at the train station.",
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow.",
    "The meeting has been moved to half past two on Thursday, so please update your calendars.",
    "Could you tell me how to get to the nearest pharmacy from here?",
    "Our quarterly revenue grew by eleven percent, mostly thanks to the new subscription plans.",
    "I think the battery is almost empty, so I'll plug the laptop in before the call starts.",
    "In eighteen sixty-nine the first transcontinental railroad in the United States was completed.",
    "Turn left at the second traffic light and the museum will be on your right.",
    "The doctor said I should drink more water and get at least seven hours of sleep every night.",
    "Honestly, I didn't expect the movie to be that good, but the ending really surprised me.",
    "To reset your password, open the settings page and choose the option labelled security.",
    "The river flooded the lower fields after three days of heavy rain in early April.",
    "Would you like your coffee with milk and sugar, or just black?",
    "Researchers measured the temperature of the lake every hour for twelve consecutive weeks.",
    "My grandmother grew tomatoes, beans, and sweet peppers in a tiny garden behind the house.",
    "The flight to Chicago is delayed by forty minutes because of a storm over the airport.",
    "Remember to save your work often, especially when you are editing large documents.",
    "A thin layer of ice covered the pond, and the children were told not to walk on it.",
    "Why does the printer always jam right before an important deadline?",
    "The orchestra tuned their instruments while the audience slowly found their seats.",
    "Mix two cups of flour with one teaspoon of salt, then add the warm water a little at a time.",
    "According to the forecast, tomorrow will be sunny with a high of twenty-four degrees.",
    "He read the letter twice, folded it carefully, and put it back in the envelope.",
    "Our team fixed the bug on Monday, but the release was postponed until next week.",
    "The library closes at nine in the evening on weekdays and at five on Saturdays.",
    "Every cell in the human body contains a complete copy of its genetic instructions.",
    "I'm sorry, could you repeat the last part? The connection keeps cutting out.",
    "The old lighthouse still guides fishing boats safely into the harbour at night.",
    "Please remember to bring your passport, your boarding pass, and a pen for the customs form.",
    "She practised the piano for an hour every morning before going to school.",
    "The committee will review all applications and announce the results in October.",
    "Wind turbines convert the kinetic energy of moving air into electricity.",
    "Let's grab lunch at the new Thai place around the corner, I heard it's excellent.",
    "The detective noticed a muddy footprint near the window and a broken flower pot.",
    "Press the green button to start the machine, and the red one to stop it in an emergency.",
    "Thousands of birds migrate south every autumn, following the same routes as their ancestors.",
    "If the package doesn't arrive by Friday, we will send you a replacement free of charge.",
    "The village square was full of music, laughter, and the smell of roasted chestnuts.",
    "Can you believe it has already been ten years since we graduated from university?",
    "The engineer explained that the bridge can carry up to forty tonnes at a time.",
    "After the long hike, we sat by the fire and watched the stars come out one by one.",
    "Customer support is available twenty-four hours a day, seven days a week.",
    "The painting was sold at auction for nearly three million dollars last spring.",
    "Good morning everyone, today we are going to talk about how speech recognition works.",
    "Scientists believe the comet will pass close to the Earth again in about seventy-six years.",
    "Don't forget to water the plants and feed the cat while I'm away this weekend.",
)
VOICES = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-us-nyc", "en-029", "en-gb-x-gbclan")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


@dataclass(frozen=True)
class SynthClip:
    """One utterance to synthesise: text, eSpeak voice (language+variant), words per minute, pitch, range."""

    text: str
    voice: str
    rate: int
    pitch: int
    pitch_range: int


def clip_plan(n_clips: int = DEFAULT_CLIPS, seed: int = 0) -> list[SynthClip]:
    """The deterministic list of utterances: each pass over the sentences is shuffled; voices vary per clip."""
    if not isinstance(n_clips, int) or n_clips < 1:
        raise CalibrationError(f"n_clips must be a positive integer, got {n_clips!r}")
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(SENTENCES)) for _ in range(-(-n_clips // len(SENTENCES)))])
    return [
        SynthClip(
            text=SENTENCES[int(i)],
            voice=f"{VOICES[rng.integers(len(VOICES))]}+{VARIANTS[rng.integers(len(VARIANTS))]}",
            rate=int(rng.integers(130, 211)),
            pitch=int(rng.integers(25, 76)),
            pitch_range=int(rng.integers(30, 81)),
        )
        for i in order[:n_clips]
    ]


def builtin_calibration_audio(n_clips: int = DEFAULT_CLIPS, seed: int = 0) -> list[np.ndarray]:
    """`n_clips` synthetic English utterances as 16 kHz float32 mono arrays, identical on every call."""
    return [clip.copy() for clip in _cached_audio(n_clips, seed)]


@functools.lru_cache(maxsize=4)
def _cached_audio(n_clips: int, seed: int) -> tuple[np.ndarray, ...]:
    import soxr

    plan = clip_plan(n_clips, seed)
    raw, rate = _synthesize_in_child(plan)
    rng = np.random.default_rng(seed + 1)
    clips = []
    for pcm in raw:
        audio = soxr.resample(pcm.astype(np.float32) / 32768.0, rate, SAMPLE_RATE).astype(np.float32)  # (n,)
        audio *= rng.uniform(0.3, 0.9) / max(float(np.abs(audio).max()), 1e-6)  # varied loudness
        noise_db = rng.uniform(-70.0, -50.0)  # faint noise floor, dB relative to full scale
        audio += (10 ** (noise_db / 20) * rng.standard_normal(audio.shape)).astype(np.float32)
        clips.append(audio)
    seconds = sum(len(c) for c in clips) / SAMPLE_RATE
    log.info("built-in calibration set: %d synthetic clips, %.1f s of speech (eSpeak NG)", len(clips), seconds)
    return tuple(clips)


def _synthesize_in_child(plan: list[SynthClip]) -> tuple[list[np.ndarray], int]:
    """Run `python -m litewhisper.audio.synth PLAN OUT` and read back the int16 clips and eSpeak's sample rate."""
    with tempfile.TemporaryDirectory(prefix="litewhisper-synth-") as tmp:
        plan_file, out_file = Path(tmp) / "plan.json", Path(tmp) / "clips.npz"
        plan_file.write_text(json.dumps([clip.__dict__ for clip in plan]))
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
        proc = subprocess.run(
            [sys.executable, "-m", "litewhisper.audio.synth", str(plan_file), str(out_file)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0 or not out_file.is_file():
            detail = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            raise CalibrationError(
                f"the built-in calibration set could not be synthesised with eSpeak NG ({detail}). It needs the "
                "`espeakng-loader` wheel (pip install espeakng-loader); or pass your own speech with "
                "--calibration DIR|MANIFEST, which also calibrates better"
            )
        with np.load(out_file) as data:
            return [data[f"clip{i}"] for i in range(len(plan))], int(data["rate"])


# ------------------------------------------------------------------------------ child process: eSpeak NG
_AUDIO_OUTPUT_SYNCHRONOUS, _POS_CHARACTER, _CHARS_UTF8 = 2, 1, 1
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER


def _espeak():
    """Load and initialise libespeak-ng from espeakng-loader; return (library, sample rate, chunk list)."""
    import ctypes

    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    data_parent = os.path.dirname(espeakng_loader.get_data_path())  # the folder holding espeak-ng-data
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_parent.encode(), 0)
    if rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data in {data_parent}")
    lib.espeak_ng_SetRandSeed(0)  # otherwise seeded from the clock
    chunks: list[np.ndarray] = []

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    def on_audio(wav, n_samples, events):  # called with successive int16 chunks; NULL at the end
        if wav and n_samples > 0:
            chunks.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
        return 0

    lib.espeak_SetSynthCallback(on_audio)
    lib._litewhisper_callback = on_audio  # keep the callback alive as long as the library
    return lib, rate, chunks


def _synthesize(lib, chunks: list[np.ndarray], clip: SynthClip) -> np.ndarray:
    """One utterance as int16 PCM at eSpeak's sample rate."""
    if lib.espeak_SetVoiceByName(clip.voice.encode()) != 0:
        raise RuntimeError(f"eSpeak NG has no voice {clip.voice!r}")
    for parameter, value in ((_RATE, clip.rate), (_PITCH, clip.pitch), (_RANGE, clip.pitch_range)):
        lib.espeak_SetParameter(parameter, value, 0)
    chunks.clear()
    text = clip.text.encode("utf-8") + b"\0"
    status = lib.espeak_Synth(text, len(text), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != 0 or not chunks:
        raise RuntimeError(f"espeak_Synth failed (status {status}) on {clip.text[:40]!r}")
    return np.concatenate(chunks)


def _child_main(plan_file: str, out_file: str) -> int:
    try:
        plan = [SynthClip(**c) for c in json.loads(Path(plan_file).read_text())]
        lib, rate, chunks = _espeak()
        clips = {f"clip{i}": _synthesize(lib, chunks, clip) for i, clip in enumerate(plan)}
    except Exception as exc:  # reported to the parent on stderr, turned into a CalibrationError there
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    np.savez(out_file, rate=np.int64(rate), **clips)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(*sys.argv[1:3]))
