"""The onnx-explain command line (placeholder until the commands land)."""

import click


@click.group()
def main() -> None:
    """Explain CNN image classifiers with one ONNX model."""


if __name__ == "__main__":
    main()
