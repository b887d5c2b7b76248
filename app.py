"""noisecorr web app: ``python app.py`` serves it on the embedded default model (no network needed)."""
import os

from noisecorr_app.ui.demo import build_demo

demo = build_demo(os.environ.get("NOISECORR_MODEL") or None)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=2).launch(server_name=os.environ.get("HOST", "127.0.0.1"),
                                                   server_port=int(os.environ.get("PORT", 7860)))
