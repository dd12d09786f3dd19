"""matplotlib without a display; the one import every figure goes through, so a missing install says how
to fix it."""
from __future__ import annotations


def pyplot():
    try:
        import matplotlib
    except ModuleNotFoundError as exc:
        # a ModuleNotFoundError naming matplotlib: the command line turns it into the extra to install
        raise ModuleNotFoundError("figures need matplotlib: pip install 'llava-dpa[analysis]' (or matplotlib)",
                                  name="matplotlib") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
