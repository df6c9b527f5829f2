"""Times the reference Piper runtime (onnxruntime) on given phoneme ids.

Driven by examples/piper_rtf.rs, which sends on stdin a JSON object:
  {"model": PATH, "threads": N, "repeats": R, "scales": [noise, length, noise_w],
   "cases": [{"name": NAME, "sentences": [[ID, ...], ...]}, ...]}
and reads on stdout, per case, the seconds each run took (model time only,
sentence by sentence as the native voice runs) and the seconds of audio.
"""

import json
import sys
import time

import numpy as np
import onnxruntime


def main() -> None:
    job = json.load(sys.stdin)
    options = onnxruntime.SessionOptions()
    # The same thread count as the native run: one op at a time, N threads in it.
    options.intra_op_num_threads = job["threads"]
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    session = onnxruntime.InferenceSession(
        job["model"], sess_options=options, providers=["CPUExecutionProvider"]
    )
    names = {i.name for i in session.get_inputs()}
    scales = np.array(job["scales"], dtype=np.float32)
    rate = job["sample_rate"]

    def run(ids: list[int]) -> int:
        feed = {
            "input": np.array([ids], dtype=np.int64),
            "input_lengths": np.array([len(ids)], dtype=np.int64),
            "scales": scales,
        }
        if "sid" in names:
            feed["sid"] = np.array([0], dtype=np.int64)
        (audio,) = session.run(["output"], feed)
        return int(audio.size)

    run(job["cases"][0]["sentences"][0])  # warm-up
    results = []
    for case in job["cases"]:
        runs = []
        samples = 0
        for _ in range(job["repeats"]):
            started = time.perf_counter()
            samples = sum(run(ids) for ids in case["sentences"])
            runs.append(time.perf_counter() - started)
        results.append(
            {"case": case["name"], "seconds": runs, "audio_seconds": samples / rate}
        )
    json.dump(
        {"onnxruntime": onnxruntime.__version__, "threads": job["threads"], "cases": results},
        sys.stdout,
    )


if __name__ == "__main__":
    main()
