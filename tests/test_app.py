"""The app starts, serves its page, and its named endpoint answers through gradio_client."""
import pytest
from conftest import save_tiny_model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from noisecorr_app.ui.demo import build_demo

    folder = save_tiny_model(tmp_path_factory.mktemp("app") / "model", num_class_embeds=4,
                             extra={"num_classes": 3, "null_class": 3, "null_timestep": 10000,
                                    "class_names": ["a", "b", "c"]})
    demo = build_demo(str(folder))
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=None, quiet=True)
    yield demo, folder
    demo.close()


def test_generate_endpoint(served):
    import numpy as np
    from gradio_client import Client
    from PIL import Image

    from noisecorr_app.images import grid, to_pil
    from noisecorr_app.models.loading import load_model
    from noisecorr_app.sampling.run import sample

    demo, folder = served
    client = Client(demo.local_url, verbose=False)
    base, fixed, plot, stats = client.predict("dpmpp", 4, 3, 2, "b", "Epsilon scaling (training-free)", 1.01,
                                              api_name="/generate")
    a, b = Image.open(base), Image.open(fixed)
    assert a.format == "PNG" and a.size == b.size == (2 * 128, 128)      # 2 images, 8px upscaled 16x
    # the baseline is exactly the library's result for the same seeds and class (PNG is lossless)
    ref = sample(load_model(folder, device="cpu"), sampler="dpmpp", steps=4, n=2, seed=3, labels=[1, 1]).images
    assert np.array_equal(np.asarray(a.convert("RGB")), np.asarray(grid(to_pil(ref), scale=16)))
    assert "4 NFE/image" in stats
    assert len(plot["data"]) == 8                                # 4 steps x 2 runs


def test_missing_model_is_a_message_not_a_crash(tmp_path):
    from noisecorr_app.ui.demo import build_demo

    demo = build_demo(str(tmp_path / "nothing-here"))
    assert demo is not None
