"""Shared helpers of the end-to-end and CLI tests."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_script(script, *args, cwd=REPO, timeout=600):
    """Run ``python <script> <args>`` as a user would; returns the CompletedProcess."""
    return subprocess.run([sys.executable, str(script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def read_metrics(log_dir):
    """The list of per-epoch records of ``<log_dir>/metrics.jsonl``."""
    return [json.loads(line) for line in (Path(log_dir) / 'metrics.jsonl').read_text().splitlines()]


def tensorboard_tags(log_dir):
    """``{'scalars': [...], 'histograms': [...]}`` written to the TensorBoard log in log_dir."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir), size_guidance={'scalars': 0, 'histograms': 0})
    acc.Reload()
    tags = acc.Tags()
    return acc, {'scalars': set(tags['scalars']), 'histograms': set(tags['histograms'])}
