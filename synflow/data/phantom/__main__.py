"""``python -m synflow.data.phantom``: (re)write the bundled example files."""

from synflow.data.phantom.examples import write_bundled_examples

for k, p in write_bundled_examples().items():
    print(f"{k:18s} {p.name:32s} {p.stat().st_size / 1024:7.0f} KiB")
