"""noisecorr web app: ``python app.py`` serves it on the embedded default model (no network needed).
NOISECORR_MODEL names another default (a folder or Hub id); HOST and PORT set the address."""
import os

from noisecorr_app.ui.app import build_demo, launch

demo = build_demo(os.environ.get("NOISECORR_MODEL") or None)

if __name__ == "__main__":
    launch(demo)
