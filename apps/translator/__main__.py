"""`python -m edgeinfer_apps.translator [--model NAME] [--memory PATH] [--threads N]`."""

from .main import run

if __name__ == "__main__":
    raise SystemExit(run())
