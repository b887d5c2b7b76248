"""The registries are the one place methods, settings and tasks are declared: the CLI, the app and
the benchmarks are made from them, and a correction declared here, in the test, runs everywhere."""
import json

import pytest
import torch

from noisecorr_app.cli import build_parser, main
from noisecorr_app.methods import METHODS, MethodSetup, MethodSpec, method_params, register, setup
from noisecorr_app.models.loading import load_model
from noisecorr_app.restoration.tasks import RESTORATION_METHODS, TABS, TASKS
from noisecorr_app.sampling.corrections import Correction, Prediction, rms
from noisecorr_app.sampling.run import sample
from noisecorr_app.settings import PARAMS, Param


def subparser(parser, *path):
    for name in path:
        action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
        parser = action.choices[name]
    return parser


def option(parser, flag):
    return next(a for a in parser._actions if flag in a.option_strings)


def test_cli_app_and_benchmark_are_made_from_the_registries():
    from noisecorr_app.ui.app import build_demo
    from noisecorr_app.ui.generate import controls

    p = build_parser()
    sample_cmd, bench = subparser(p, "sample"), subparser(p, "evaluate", "generation")
    assert option(sample_cmd, "--method").choices == list(METHODS)
    assert option(bench, "--methods").default == ",".join(METHODS)
    for key in method_params():                      # every setting a method reads is a flag, declared once
        for cmd in (sample_cmd, bench, subparser(p, "evaluate", "fid")):
            assert option(cmd, PARAMS[key].flag).default is None
    restore_cmd = subparser(p, "restore")
    assert option(restore_cmd, "--task").choices == list(TASKS)
    assert option(restore_cmd, "--method").choices == list(RESTORATION_METHODS)
    assert option(restore_cmd, "--correction").choices == [k for k, s in METHODS.items() if s.in_restoration]
    restore_bench = subparser(p, "evaluate", "restoration")
    assert option(restore_bench, "--methods").default == ",".join(RESTORATION_METHODS)
    assert set(option(restore_bench, "--tasks").default.split(",")) <= set(TASKS)

    demo = build_demo()
    api = demo.get_api_info()["named_endpoints"]
    gen = api["/generate"]["parameters"]
    names = [q["parameter_name"] for q in gen]
    assert names[names.index("method") + 1:] == list(controls())
    for q in gen[names.index("method") + 1:]:        # each control shows its declaration's label
        assert q["label"].startswith(controls()[q["parameter_name"]].label)
    for tab, task in TABS.items():                   # one tab per task with a tab, its settings as inputs
        params = [q["parameter_name"] for q in api[f"/{tab}"]["parameters"]]
        assert [q.key for q in task.params] == params[1:1 + len(task.params)]


class Scaled(Correction):
    """A toy correction: the network's eps times a constant."""
    name = "toy"

    def __init__(self, gain):
        self.gain = gain

    def predict(self, model, x, sigma, sigma_next, cond, step):
        eps = model.eps(x, sigma, cond)
        return Prediction(x, eps * self.gain, sigma, sigma_next, rms(eps))


@pytest.fixture
def toy():
    """A correction and its setting declared here, registered for this test only."""
    PARAMS["toy_gain"] = Param("toy_gain", "Toy gain", 0.5, 1.5, 1.0, "eps is multiplied by this", control="toy_gain")
    yield register(MethodSpec("toy", "toy correction (eps times a constant)",
                              lambda run: MethodSetup(Scaled(run.values["toy_gain"])), ("toy_gain",)))
    METHODS.pop("toy")
    PARAMS.pop("toy_gain")


def test_a_correction_declared_once_runs_in_sample_the_cli_and_the_app(toy, tiny_model_dir, tmp_path):
    from noisecorr_app.ui.generate import controls, parse_generate, run_generate
    from noisecorr_app.ui.state import correction_choices

    model = load_model(tiny_model_dir, device="cpu")
    # the library: setup() builds it, sample() runs it; gain 1 is the plain sampler, another gain is not
    plain = sample(model, steps=3, n=2, seed=1).images
    same = sample(model, steps=3, n=2, seed=1, correction=setup("toy", model).correction).images
    other = sample(model, steps=3, n=2, seed=1, correction=setup("toy", model, toy_gain=0.8).correction).images
    assert torch.equal(plain, same) and not torch.allclose(plain, other)
    with pytest.raises(ValueError, match="^Toy gain must be a number from 0.5 to 1.5, got 9.0$"):
        setup("toy", model, toy_gain=9.0)

    # the CLI: --method toy and its flag --toy-gain, checked against the declaration
    out = tmp_path / "cli"
    assert main(["sample", "--model", str(tiny_model_dir), "--method", "toy", "--toy-gain", "0.8", "--steps", "3",
                 "--n", "2", "--seed", "1", "--out", str(out), "--trace", str(out / "t.json"), "--device", "cpu"]) == 0
    assert json.loads((out / "t.json").read_text())["settings"]["correction"] == "toy"
    assert main(["sample", "--model", str(tiny_model_dir), "--method", "toy", "--toy-gain", "9", "--steps", "3",
                 "--out", str(tmp_path / "bad"), "--device", "cpu"]) == 2

    # the app: offered for the model, a control of its own, and the Generate run uses its value
    assert "toy" in [k for _, k in correction_choices(model)[0]]
    assert "toy_gain" in controls()
    values = [0.8 if c == "toy_gain" else None for c in controls()]
    req = parse_generate(model, "any class", "ddim", 3, 1, 2, "toy", *values)
    assert req.params == {"toy_gain": 0.8}
    runs = run_generate(model, req)
    torch.testing.assert_close(runs["corrected"].images, other)
    torch.testing.assert_close(runs["baseline"].images, plain)


def test_validated_restoration_settings_are_read_from_the_model_folder(tmp_path, tiny_model_dir):
    """noisecorr.json ``restoration`` holds each method's settings chosen on train images: `restore`,
    the app's restoration run and the benchmark use them; a change there changes the run."""
    import shutil

    import numpy as np
    from PIL import Image

    from noisecorr_app.methods import restoration_settings
    from noisecorr_app.ui.restore import parse_restore, run_restore

    img = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)).save(img)
    outputs = {}
    for eta, level, below in ((0.2, 0.0, 2.0), (1.0, 0.6, 0.5)):
        folder = tmp_path / f"m{eta}"
        shutil.copytree(tiny_model_dir, folder)
        (folder / "noisecorr.json").write_text(json.dumps({"restoration": {"ddnm": {"eta": eta},
                                                                         "diffpir": {"prox_weight": 3.0},
                                                                         "iterproj-nlc": {"level_ratio": level,
                                                                                          "level_below": below}}}))
        model = load_model(folder, device="cpu")
        assert restoration_settings(model, "ddnm") == {"eta": eta}
        assert restoration_settings(model, "diffpir") == {"eta": RESTORATION_METHODS["diffpir"].eta, "prox_weight": 3.0}
        out = tmp_path / f"r{eta}"
        assert main(["restore", "--model", str(folder), "--task", "sr2", "--input", str(img), "--method", "ddnm",
                     "--steps", "4", "--out", str(out), "--device", "cpu"]) == 0
        req, x, op = parse_restore(model, "super_resolution", str(img), 0.0, 4, 0, factor=2)
        app = run_restore(model, req, x, op)
        assert app["baseline"].settings["eta"] == eta                       # the app's DDNM run
        assert app["corrected"].settings["level_ratio"] == level            # and its IterProj-NLC run
        assert app["corrected"].settings["level_below"] == below
        assert main(["restore", "--model", str(folder), "--task", "sr2", "--input", str(img), "--method", "iterproj-nlc",
                     "--steps", "4", "--out", str(out), "--device", "cpu", "--overwrite"]) == 0
        outputs[eta] = (np.asarray(Image.open(out / "in_sr2_ddnm.png")), app["baseline"].images,
                        np.asarray(Image.open(out / "in_sr2_iterproj-nlc.png")), app["corrected"].images)
    for a, b in zip(outputs[0.2], outputs[1.0]):
        assert not (np.array_equal(a, b) if isinstance(a, np.ndarray) else torch.equal(a, b))
    # a choice keyed by step count: the run takes the entry nearest its budget
    keyed = tmp_path / "keyed"
    shutil.copytree(tiny_model_dir, keyed)
    (keyed / "noisecorr.json").write_text(json.dumps({"restoration": {"ddnm": {"eta": {"20": 0.4, "100": 0.9}}}}))
    model = load_model(keyed, device="cpu")
    assert [restoration_settings(model, "ddnm", s)["eta"] for s in (4, 20, 40, 50, 100, 1000, None)] == \
        [0.4, 0.4, 0.4, 0.9, 0.9, 0.9, 0.4]
    req, x, op = parse_restore(model, "super_resolution", str(img), 0.0, 50, 0, factor=2)
    assert run_restore(model, req, x, op)["baseline"].settings["eta"] == 0.9
    # a value out of range is refused, naming the file
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "noisecorr.json").write_text(json.dumps({"restoration": {"ddrm": {"eta": 3}}}))
    with pytest.raises(ValueError, match="noisecorr.json, restoration.ddrm: Fresh noise eta must be"):
        restoration_settings(load_model(bad, device="cpu"), "ddrm")


def test_every_option_says_its_default_in_help():
    import argparse

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    yield from walk(child, path + [name])
            elif action.default not in (None, False, argparse.SUPPRESS):
                yield path, action

    missing = [f"{' '.join(path)} {a.option_strings}" for path, a in walk(build_parser(), [])
               if "default" not in (a.help or "")]
    assert not missing, missing


def test_a_request_that_would_hold_the_server_for_minutes_is_refused():
    """The app's cost cap counts both runs' network evaluations (methods declare theirs: NAG batches two),
    priced with the model's measured speed on this machine: about a minute's worth."""
    from noisecorr_app.ui.generate import parse_generate
    from noisecorr_app.ui.limits import BUDGET_SECONDS, request_budget, seconds_per_image

    model = load_model(device="cpu")                       # the embedded 32x32 model
    budget = request_budget(model)
    assert budget == int(BUDGET_SECONDS / seconds_per_image(model))
    assert 3 <= budget < 19_200, budget                    # more than 3 ms an image on a CPU
    with pytest.raises(ValueError, match=r"^This request needs about 19,200 network evaluations \(about \d+ (s|minutes) on "
                                         r"this server\), .* fewer images or steps\.$"):
        parse_generate(model, "any class", "edm", 200, 0, 16, "nag")      # 16 x 200 x 2 (Heun) x (1 + 2)
    steps = min(budget // 3, 200)                                         # x (1 + 2) evaluations: the budget
    assert parse_generate(model, "any class", "ddim", steps, 0, 1, "nag").steps == steps


def test_every_method_setting_and_metric_shown_has_plain_words():
    """What a visitor reads is words first: each correction by what it does (its code second), each control
    with a sentence of help, each table row starting with words and marked better-up or better-down."""
    import re

    from noisecorr_app.restoration.tasks import TASKS as RESTORE_TASKS
    from noisecorr_app.ui.generate import controls, first_comparison
    from noisecorr_app.ui.restore import parse_restore, restore_outputs, run_restore
    from noisecorr_app.ui.state import correction_choices

    model = load_model(device="cpu")
    for label, code in correction_choices(model)[0]:
        assert label.endswith(f"({code})") and len(label[: -len(code) - 2].split()) >= 3, label
    for control, param in controls().items():
        assert len(param.help.split()) >= 4, control
    for task in RESTORE_TASKS.values():
        assert len(task.description.split()) >= 4 and task.shown_as, task.name
    for method in RESTORATION_METHODS.values():
        assert method.title, method.name

    def rows(markdown):
        return [re.split(r"(?<!\\)\|", line)[1].strip() for line in markdown.splitlines()
                if line.startswith("|") and not set(line) <= set("|-") and "baseline" not in line]

    gen = first_comparison(model, "nag+nlc-est", 10)["metrics"]
    req, x, op = parse_restore(model, "deblur", "noisecorr_app/ui/examples/cifar10_cat.png", 0.05, 2, 0)
    rest = restore_outputs(model, req, x, op, run_restore(model, req, x, op))["metrics"]
    for row in rows(gen) + rows(rest):
        assert re.match(r"^[a-z]", row), row                       # words first, symbols after
        counts = ("network evaluations", "seconds")
        assert row.startswith(counts) or "↓" in row or "↑" in row, row
