"""Bad input to every subcommand: exit code 2, one line on stderr that names the problem,
no traceback, and nothing written or changed (checksums of every file around, before and
after). Run in this process (cli.main), so each case costs milliseconds; the cases that
need a process of their own (what happens at interpreter exit) run one.

The numbered findings are those of issue 17 (its "What was found" list); a case tagged
with one fails on the code before that issue.
"""

import dataclasses
import hashlib
import pathlib
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
from PIL import Image

import test_train_support as support
from lumiere_jax import cli
from lumiere_jax import weights

DEBUG_ENV = "LUMIERE_DEBUG"
LONG_PROMPT = "a red circle moving left " * 400  # 10,000 characters, 2,000 words


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  argv: tuple
  message: str
  loads_model: bool = False  # whether the model may be loaded before the refusal


def case(name, argv, message, loads_model=False):
  return Case(name, tuple(argv), message, loads_model)


MICRO = tuple(support.cli_overrides())
DATA = "--config.train.data_dir={inputs}/data"


def train(*argv, workdir="{tmp}/run"):
  return ("train", "--config", "shapes_tiny:t2i", "--workdir", workdir, *MICRO, *argv)


def generate(*argv, out="{tmp}/out.mp4"):
  return ("generate", "--prompt", "a red circle moving left", *argv,
          *(("--out", out) if out else ()))


COND = ("--config", "shapes_tiny:cond")  # a config, so nothing is built before the refusal


def animate(*argv, image="{inputs}/image32.png", out="{tmp}/a.npy", config=COND):
  return ("animate", "--image", image, "--prompt", "a red circle moving left", "--out", out,
          *config, *argv)


def inpaint(*argv, video="{inputs}/video16.npy", mask="{inputs}/mask32.png", config=COND):
  return ("inpaint", "--video", video, "--mask", mask, "--prompt", "a red circle",
          "--out", "{tmp}/i.npy", *config, *argv)


def cinemagraph(*argv, config=COND):
  return ("cinemagraph", "--image", "{inputs}/image32.png", "--prompt", "a red circle",
          "--out", "{tmp}/c.npy", *config, *argv)


def stylize(*argv, style=("--style-checkpoint", "{inputs}/ckpt"), config=()):
  return ("stylize", *style, "--prompt", "a red circle", "--out", "{tmp}/s.npy", *config,
          *argv)


def edit(*argv, video="{inputs}/video16.npy", out="{tmp}/e.npy", config=()):
  return ("edit", "--video", video, "--prompt", "a red circle", "--out", out, *config,
          *argv)


CASES = [
    # train: the config
    case("train/config-missing", ("train", "--config", "{inputs}/missing.py",
                                  "--workdir", "{tmp}/run"), "config file not found"),
    case("train/config-syntax-error", ("train", "--config", "{inputs}/syntax.py",
                                       "--workdir", "{tmp}/run"),
         "syntax.py:1 failed to load: SyntaxError"),
    case("train/config-syntax-error-in-get-config (finding 1)",
         ("train", "--config", "{inputs}/eval_syntax.py", "--workdir", "{tmp}/run"),
         "eval_syntax.py:3: get_config raised SyntaxError"),
    case("train/get-config-raises (finding 9)",
         ("train", "--config", "{inputs}/raises.py", "--workdir", "{tmp}/run"),
         "raises.py:4: get_config raised RuntimeError: no such variant"),
    case("train/get-config-returns-int", ("train", "--config", "{inputs}/returns_int.py",
                                          "--workdir", "{tmp}/run"),
         "get_config returned int, not an ml_collections.ConfigDict"),
    case("train/config-calls-sys-exit", ("train", "--config", "{inputs}/exits.py",
                                         "--workdir", "{tmp}/run"), "SystemExit(3)"),
    case("train/config-without-our-fields", ("train", "--config", "{inputs}/foreign.py",
                                             "--workdir", "{tmp}/run"),
         "is not a lumiere config"),
    case("train/unknown-override", train("--config.train.learnin_rate=1"),
         "did you mean 'train.learning_rate'?"),
    case("train/override-type", train("--config.train.num_steps=x"),
         "config key 'train.num_steps' expects int"),
    case("train/num-steps-0", train("--config.train.num_steps=0", DATA),
         "train.num_steps=0 is invalid"),
    case("train/learning-rate-scale-of-a-frozen-group",
         train("--config.train.learning_rate_scales=('text=10',)", DATA),
         "train.learning_rate_scales=('text=10',) is invalid"),
    case("train/adapter-layers-negative",
         ("train", "--config", "shapes_tiny:t2v", "--workdir", "{tmp}/run", *MICRO,
          "--config.model.temporal.text_adapter_layers=-1"),
         "model.temporal.text_adapter_layers=-1 is invalid"),
    case("train/caption-drop-word-not-in-the-vocabulary",
         ("train", "--config", "shapes_tiny:t2v", "--workdir", "{tmp}/run", *MICRO,
          "--config.model.temporal.caption_drop_words=('hexagon',)"),
         "model.temporal.caption_drop_words=('hexagon',) is invalid"),
    case("train/no-workdir", ("train", "--config", "shapes_tiny:t2i"),
         "--workdir is required"),
    case("train/stop-at-step-negative", train(DATA, "--stop_at_step=-1"),
         "--stop_at_step must be >= 0"),
    case("train/num-processes-not-a-number", train("--num_processes", "x"),
         "invalid int value: 'x'"),
    # train: the data and the init checkpoint, refused before anything is created
    case("train/data-dir-empty (finding 14)", train(), "config.train.data_dir is empty"),
    case("train/data-dir-missing (finding 14)",
         train("--config.train.data_dir={tmp}/nowhere"), "dataset folder"),
    case("train/data-dir-wrong-resolution", train(DATA, "--config.data.resolution=64"),
         "data.resolution=64"),
    case("train/t2v-without-init-checkpoint (finding 14)",
         ("train", "--config", "shapes_tiny:t2v", "--workdir", "{tmp}/run", *MICRO, DATA),
         "needs train.init_checkpoint"),
    case("train/init-checkpoint-missing (finding 14)",
         ("train", "--config", "shapes_tiny:t2v", "--workdir", "{tmp}/run", *MICRO, DATA,
          "--config.train.init_checkpoint={tmp}/nowhere"), "does not exist"),
    case("train/init-checkpoint-junk (finding 2)",
         ("train", "--config", "shapes_tiny:t2v", "--workdir", "{tmp}/run", *MICRO, DATA,
          "--config.train.init_checkpoint={inputs}/junk"),
         "junk/checkpoints/7 is not a complete checkpoint"),
    # train: the workdir
    case("train/workdir-is-a-file", train(DATA, workdir="{inputs}/file.txt"),
         "file.txt exists and is not a folder"),
    case("train/workdir-under-a-file", train(DATA, workdir="{inputs}/file.txt/run"),
         "file.txt is a file, not a folder"),
    case("train/checkpoints-is-a-file (finding 3)", train(DATA, workdir="{inputs}/ckfile"),
         "checkpoints exists and is not a folder"),
    case("train/metrics-file-is-a-folder", train(DATA, workdir="{inputs}/metricsdir"),
         "metrics.jsonl is not a file"),
    case("train/junk-numbered-folder (finding 2)", train(DATA, workdir="{inputs}/junk"),
         "junk/checkpoints/7 is not a complete checkpoint"),
    case("train/junk-beside-a-checkpoint (finding 2)", train(DATA, workdir="{inputs}/mixed"),
         "mixed/checkpoints/9 is not a complete checkpoint"),
    case("train/process-id-out-of-range",
         train(DATA, "--coordinator_address", "127.0.0.1:9", "--num_processes", "2",
               "--process_id", "5"), "process_id=5 must be in [0, num_processes=2)"),
    # generate: inputs and outputs, all before the model is loaded
    case("generate/prompts-binary (finding 5)", ("generate", "--prompts",
                                                 "{inputs}/binary.txt", "--out",
                                                 "{tmp}/out.mp4"),
         "binary.txt is not UTF-8 text"),
    case("generate/prompts-nul-bytes", ("generate", "--prompts", "{inputs}/nul.txt",
                                        "--out", "{tmp}/out.mp4"), "holds NUL bytes"),
    case("generate/prompts-missing", ("generate", "--prompts", "{tmp}/none.txt",
                                      "--out", "{tmp}/out.mp4"), "prompts file not found"),
    case("generate/out-under-a-file (finding 6)", generate(out="{inputs}/file.txt/x.gif"),
         "file.txt is a file, not a folder"),
    case("generate/out-is-a-folder", generate(out="{inputs}/empty_dir.mp4"),
         "is a folder; give a file path"),
    case("generate/out-dir-is-a-file", generate("--out-dir", "{inputs}/file.txt", out=None),
         "--out-dir {inputs}/file.txt exists and is not a folder"),
    case("generate/xt-slice-under-a-file", generate("--xt-slice", "{inputs}/file.txt/x.png"),
         "--xt-slice"),
    case("generate/sheet-under-a-file", generate("--sheet", "{inputs}/file.txt/s.png"),
         "--sheet"),
    case("generate/out-format", generate(out="{tmp}/out.avi"), "unsupported video format"),
    case("generate/steps-huge (finding 7)", generate("--steps", "99999999999"),
         "--steps must be an integer >= 1 and <= 10000"),
    case("generate/steps-0", generate("--steps", "0"), "steps must be an integer >= 1"),
    case("generate/eta", generate("--eta", "2"), "--eta must be in [0, 1]"),
    case("generate/time-power-0", generate("--time-power", "0"),
         "time_power must be a number in (0, 8], got 0.0"),
    case("generate/time-power-nan", generate("--time-power", "nan"),
         "time_power must be a number in (0, 8], got nan"),
    case("generate/guidance-nan", generate("--guidance", "nan"), "guidance scale must be"),
    case("generate/seed-negative", generate("--seed", "-1"), "seed must be in"),
    case("generate/strength-without-init-video", generate("--strength", "0.5"),
         "--strength applies to --init-video"),
    case("generate/init-video-missing", generate("--init-video", "{tmp}/none.npy"),
         "video file not found"),
    case("generate/init-video-not-npy", generate("--init-video", "{inputs}/text.npy"),
         "not a readable .npy array"),
    case("generate/emoji-prompt (finding 10)", ("generate", "--prompt", "\U0001F600\u2728!!",
                                                "--out", "{tmp}/out.mp4"),
         "prompt 1 ('\U0001F600\u2728!!') has no words"),
    case("generate/expert-switch-out-of-range", generate("--expert-switch", "1.5"),
         "expert switch 1.5 is invalid; allowed: a time in [0, 1)"),
    case("generate/step-without-checkpoint", generate("--step", "3"),
         "--step selects a step of --checkpoint"),
    case("generate/get-config-raises (finding 9)", generate("--config",
                                                             "{inputs}/raises.py"),
         "raises.py:4: get_config raised RuntimeError"),
    # generate: what is only known once the model's config is read
    case("generate/prompt-too-long (finding 10)", ("generate", "--prompt", LONG_PROMPT,
                                                   "--out", "{tmp}/out.mp4"),
         "prompt 1 has 2000 words; this model reads at most 22", loads_model=True),
    case("generate/checkpoint-junk (finding 2)", generate("--checkpoint", "{inputs}/junk"),
         "junk/checkpoints/7 is not a complete checkpoint", loads_model=True),
    case("generate/checkpoint-junk-beside-a-checkpoint (finding 2)",
         generate("--checkpoint", "{inputs}/mixed"),
         "mixed/checkpoints/9 is not a complete checkpoint", loads_model=True),
    case("generate/expert-not-shipped", generate("--expert", "nowhere", "--expert-switch",
                                                 "0.4"),
         "no shipped model named 'nowhere'", loads_model=True),
    case("generate/checkpoint-is-a-file", generate("--checkpoint", "{inputs}/file.txt"),
         "is not a folder", loads_model=True),
    case("generate/checkpoint-step-missing", generate("--checkpoint", "{inputs}/ckpt",
                                                      "--step", "3"),
         "has no step 3 (steps: 4)", loads_model=True),
    case("generate/keyframes-tsr-with-init-video",
         generate("--pipeline", "keyframes-tsr", "--init-video", "{inputs}/video16.npy"),
         "--init-video does not apply to --pipeline keyframes-tsr"),
    case("generate/tsr-checkpoint-without-the-cascade",
         generate("--tsr-checkpoint", "{inputs}/ckpt"),
         "--tsr-checkpoint and --tsr-model apply to --pipeline keyframes-tsr"),
    case("generate/model-unknown", generate("--model", "nope"),
         "no shipped model named 'nope'", loads_model=True),
    # data
    case("data/text-embeddings-garbage (finding 8)",
         ("data", "build", "shapes", "--out", "{tmp}/d", "--num-videos", "2",
          "--text-embeddings", "{inputs}/garbage.npz"), "garbage.npz is not an .npz archive"),
    case("data/text-embeddings-npy", ("data", "build", "shapes", "--out", "{tmp}/d",
                                      "--num-videos", "2", "--text-embeddings",
                                      "{inputs}/text.npy"), "is not an .npz archive"),
    case("data/text-embeddings-wrong-keys", ("data", "build", "shapes", "--out", "{tmp}/d",
                                             "--num-videos", "2", "--text-embeddings",
                                             "{inputs}/keys.npz"),
         "is not an .npz with captions, embeddings and mask"),
    case("data/text-embeddings-missing", ("data", "build", "shapes", "--out", "{tmp}/d",
                                          "--num-videos", "2", "--text-embeddings",
                                          "{tmp}/none.npz"), "does not exist"),
    case("data/out-is-a-file", ("data", "build", "shapes", "--out", "{inputs}/file.txt",
                                "--num-videos", "2"), "file.txt exists and is not a folder"),
    case("data/out-under-a-file", ("data", "build", "shapes", "--out",
                                   "{inputs}/file.txt/d", "--num-videos", "2"),
         "file.txt is a file, not a folder"),
    case("data/dataset-exists", ("data", "build", "shapes", "--out", "{inputs}/data",
                                 "--num-videos", "2"), "already exists"),
    case("data/resolution", ("data", "build", "shapes", "--out", "{tmp}/d", "--num-videos",
                             "2", "--resolution", "48"), "resolution 48 is not supported"),
    case("data/frames-0", ("data", "build", "shapes", "--out", "{tmp}/d", "--num-videos",
                           "2", "--frames", "0"), "frames must be between 1 and 80"),
    case("data/num-videos-0", ("data", "build", "shapes", "--out", "{tmp}/d",
                               "--num-videos", "0"), "number of videos must be at least 1"),
    case("data/two-object-fraction", ("data", "build", "shapes", "--out", "{tmp}/d",
                                      "--num-videos", "2", "--two-object-fraction", "2"),
         "two-object fraction"),
    case("data/held-out", ("data", "build", "shapes", "--out", "{tmp}/d", "--num-videos",
                           "2", "--held-out", "purple hexagon"), "held-out combination"),
    case("data/num-videos-not-a-number", ("data", "build", "shapes", "--out", "{tmp}/d",
                                          "--num-videos", "many"), "invalid int value"),
    case("data/folder-src-missing", ("data", "build", "folder", "--src", "{tmp}/none",
                                     "--out", "{tmp}/d", "--resolution", "32", "--frames",
                                     "4"), "does not exist"),
    case("data/folder-resolution", ("data", "build", "folder", "--src", "{inputs}/empty_dir",
                                    "--out", "{tmp}/d", "--resolution", "30", "--frames",
                                    "4"), "resolution 30 is not supported"),
    case("data/folder-fps", ("data", "build", "folder", "--src", "{inputs}/empty_dir",
                             "--out", "{tmp}/d", "--resolution", "32", "--frames", "4",
                             "--fps", "0"), "fps must be positive"),
    case("data/folder-no-videos", ("data", "build", "folder", "--src", "{inputs}/empty_dir",
                                   "--out", "{tmp}/d", "--resolution", "32", "--frames",
                                   "4"), "no videos in"),
    case("data/show-missing", ("data", "show", "{tmp}/none", "--out", "{tmp}/g.png"),
         "does not exist"),
    case("data/show-format", ("data", "show", "{inputs}/data", "--out", "{tmp}/g.gif"),
         "written as .png or .jpg"),
    case("data/show-out-under-a-file", ("data", "show", "{inputs}/data", "--out",
                                        "{inputs}/file.txt/g.png"),
         "file.txt is a file, not a folder"),
    case("data/show-split", ("data", "show", "{inputs}/data", "--out", "{tmp}/g.png",
                             "--split", "nope"), "has no split 'nope'"),
    case("data/no-action", ("data",), "the following arguments are required"),
    # eval
    case("eval/shapes-num-0", ("eval", "shapes", "--num", "0"), "--num must be >= 1"),
    case("eval/shapes-time-power-9", ("eval", "shapes", "--time-power", "9"),
         "time_power must be a number in (0, 8], got 9.0"),
    case("eval/shapes-json-format", ("eval", "shapes", "--json", "{tmp}/r.txt"),
         "write it as .json"),
    case("eval/shapes-json-under-a-file", ("eval", "shapes", "--json",
                                           "{inputs}/file.txt/r.json"), "--json"),
    case("eval/shapes-videos-format", ("eval", "shapes", "--videos", "{tmp}/v.npy"),
         "--videos {tmp}/v.npy: write it as .npz"),
    case("eval/shapes-videos-missing-folder", ("eval", "shapes", "--videos",
                                               "{tmp}/missing/v.npz"), "does not exist"),
    case("eval/shapes-expert-switch-negative", ("eval", "shapes", "--expert-switch", "-0.1"),
         "expert switch -0.1 is invalid"),
    case("eval/shapes-step-without-checkpoint", ("eval", "shapes", "--step", "3"),
         "--step selects a step of --checkpoint"),
    case("eval/shapes-checkpoint-junk (finding 2)", ("eval", "shapes", "--checkpoint",
                                                     "{inputs}/junk"),
         "junk/checkpoints/7 is not a complete checkpoint", loads_model=True),
    case("eval/probe-seeds-0", ("eval", "probe", "--seeds", "0"), "--seeds must be >= 1"),
    case("eval/probe-raw-without-checkpoint", ("eval", "probe", "--raw"),
         "--raw selects the raw weights of --checkpoint"),
    case("eval/probe-data-missing", ("eval", "probe", "--data", "{tmp}/none"),
         "is not a folder"),
    case("eval/unknown-evaluator", ("eval", "fid"), "invalid choice: 'fid'"),
    case("eval/tsr-model-without-the-cascade", ("eval", "shapes", "--tsr-model", "x"),
         "--tsr-checkpoint and --tsr-model apply to --pipeline keyframes-tsr"),
    case("eval/fvd-with-too-few-clips", ("eval", "shapes", "--fvd", "--num", "64"),
         "--fvd needs --num above 64"),
    case("eval/contrast-with-the-cascade", ("eval", "shapes", "--pipeline", "keyframes-tsr",
                                            "--contrast"),
         "--contrast applies to --pipeline stunet"),
    case("eval/pipeline-unknown", ("eval", "shapes", "--pipeline", "tsr"),
         "invalid choice: 'tsr'"),
    # demo, bench, export
    case("demo/out-is-a-file", ("demo", "--out", "{inputs}/file.txt"),
         "exists and is not a directory"),
    case("demo/model-unknown", ("demo", "--out", "{tmp}/demo", "--model", "nope"),
         "no shipped model named 'nope'", loads_model=True),
    case("bench/preset", ("bench", "tiny-t3v"), "unknown preset 'tiny-t3v'"),
    case("bench/steps-0", ("bench", "tiny-t2v", "--steps", "0"), "--steps must be >= 1"),
    case("bench/json-is-a-folder", ("bench", "tiny-t2v", "--json", "{inputs}/empty_dir"),
         "is a directory"),
    case("bench/batch-with-base", ("bench", "base", "--batch", "2"),
         "--batch applies to the tiny-* presets"),
    # issue 18: a mesh that does not fit the devices or the batch, an unknown remat policy
    case("bench/mesh-does-not-divide-the-devices",
         ("bench", "base", "--config.mesh.shape=(3,-1,1)"), "does not divide 8 devices"),
    case("bench/mesh-needs-more-devices", ("bench", "tiny-t2v", "--config.mesh.shape=(1,16,1)"),
         "needs 16 devices, have 8"),
    case("bench/remat-unknown", ("bench", "base", "--config.model.remat=blocks"),
         "model.remat='blocks' is invalid"),
    case("export/name", ("export", "--checkpoint", "{inputs}/ckpt", "--name", "Bad-Name",
                         "--out", "{tmp}/models"), "use lower-case letters, digits and _"),
    case("export/out-is-a-file", ("export", "--checkpoint", "{inputs}/ckpt", "--name", "m",
                                  "--out", "{inputs}/file.txt"),
         "file.txt exists and is not a folder"),
    case("export/steps-0", ("export", "--checkpoint", "{inputs}/ckpt", "--name", "m",
                            "--out", "{tmp}/models", "--steps", "0"),
         "--steps must be an integer >= 1"),
    case("export/time-power-0", ("export", "--checkpoint", "{inputs}/ckpt", "--name", "m",
                                 "--out", "{tmp}/models", "--time-power", "0"),
         "time_power must be a number in (0, 8], got 0.0"),
    case("export/checkpoint-junk (finding 2)", ("export", "--checkpoint", "{inputs}/junk",
                                                "--name", "m", "--out", "{tmp}/models"),
         "junk/checkpoints/7 is not a complete checkpoint", loads_model=True),
    # the applications: inputs, then the model's config (never its weights)
    case("animate/image-missing", animate(image="{tmp}/none.png"), "image file not found"),
    case("animate/image-format", animate(image="{inputs}/file.txt"), "unsupported format"),
    case("animate/image-not-a-picture", animate(image="{inputs}/fake.png"),
         "not a readable picture"),
    case("animate/image-size-for-the-shipped-model",
         animate(image="{inputs}/image8.png", config=()),
         "is 8x8 pixels; this model makes 32x32 frames"),
    case("animate/not-a-conditional-model", animate(config=("--model", "shapes_t2v")),
         "animate needs a conditional <J, C, M> model (model.in_channels=7"),
    case("animate/t2v-config", animate(config=("--config", "shapes_tiny:t2v")),
         "model.in_channels=3 (stage 't2v')"),
    case("animate/image-size", animate(image="{inputs}/image8.png"),
         "is 8x8 pixels; this model makes 32x32 frames"),
    case("animate/last-image-size", animate("--last-image", "{inputs}/image8.png"),
         "--last-image"),
    case("animate/out-format", animate(out="{tmp}/a.avi"), "unsupported video format"),
    case("animate/dilate-negative", animate("--dilate", "-1"), "--dilate must be >= 0"),
    case("animate/steps-0", animate("--steps", "0"), "--steps must be an integer >= 1"),
    case("animate/known-pixels-config", animate("--config.diffusion.known_pixels=paste"),
         "known pixels mode 'paste' is invalid"),
    case("animate/known-pixels-flag", animate("--known-pixels", "paste"),
         "invalid choice: 'paste'"),
    case("inpaint/video-missing", inpaint(video="{tmp}/none.npy"), "video file not found"),
    case("inpaint/mask-missing", inpaint(mask="{tmp}/none.png"), "mask file not found"),
    case("inpaint/mask-format", inpaint(mask="{inputs}/image8.jpg"), "unsupported format"),
    case("inpaint/mask-size", inpaint(mask="{inputs}/mask8.png"),
         "is 8x8 pixels; this model's clips need 32x32 pixels"),
    case("inpaint/mask-grey", inpaint(mask="{inputs}/grey.png"),
         "grey levels other than black (0) and white (255)"),
    case("inpaint/mask-values", inpaint(mask="{inputs}/twos.npy"), "must hold only 0 and 1"),
    case("inpaint/mask-rank", inpaint(mask="{inputs}/flat.npy"),
         "must be a .npy [T, H, W]"),
    case("inpaint/mask-frames", inpaint(mask="{inputs}/mask8frames.npy"),
         "[T, H, W] = 8x32x32"),
    case("inpaint/video-frames", inpaint(video="{inputs}/video8.npy"),
         "is 8x32x32 (frames x height x width); this model makes 16x32x32"),
    case("inpaint/outpaint-too-wide", ("inpaint", "--video", "{inputs}/video16.npy",
                                       "--outpaint", "16", "--prompt", "a red circle",
                                       "--out", "{tmp}/o.npy", *COND),
         "the border must be 1 to 15 pixels"),
    case("inpaint/outpaint-and-mask", inpaint("--outpaint", "2"), "not allowed with"),
    case("inpaint/not-a-conditional-model", inpaint(config=("--model", "shapes_t2v")),
         "inpaint needs a conditional"),
    case("cinemagraph/region-outside", cinemagraph("--region", "0,0,40,10"),
         "region 0,0,40,10 is not inside the 32x32 frame"),
    case("cinemagraph/region-empty", cinemagraph("--region", "5,5,5,9"), "is not inside"),
    case("cinemagraph/region-syntax", cinemagraph("--region", "1,2,3"),
         "is not x0,y0,x1,y1"),
    case("cinemagraph/mask-npy", cinemagraph("--mask", "{inputs}/twos.npy"),
         "one black-and-white .png"),
    case("cinemagraph/no-region", cinemagraph(), "one of the arguments --region --mask is "
                                                 "required"),
    case("cinemagraph/not-a-conditional-model",
         cinemagraph("--region", "1,1,5,5", config=("--model", "shapes_t2v")),
         "cinemagraph needs a conditional"),
    case("stylize/alpha-above-1", stylize("--alpha", "1.5"), "alpha must be in [0, 1]"),
    case("stylize/alpha-nan", stylize("--alpha", "nan"), "alpha must be in [0, 1]"),
    case("stylize/style-missing", stylize("--alpha", "0.5", style=("--style", "nope")),
         "no shipped model named 'nope'"),
    case("stylize/style-checkpoint-missing",
         stylize("--alpha", "0.5", style=("--style-checkpoint", "{tmp}/nowhere")),
         "does not exist"),
    case("stylize/base-is-a-conditional-model",
         stylize("--alpha", "0.5", style=("--style-checkpoint", "{inputs}/ckpt"),
                 config=("--config", "shapes_tiny:cond")),
         "stylize needs text-to-video / text-to-image models"),
    case("stylize/no-style", ("stylize", "--alpha", "0.5", "--prompt", "a red circle",
                              "--out", "{tmp}/s.npy"),
         "one of the arguments --style --style-checkpoint is required"),
    case("edit/strength-0", edit("--strength", "0"), "strength must be in (0, 1]"),
    case("edit/strength-above-1", edit("--strength", "1.5"), "strength must be in (0, 1]"),
    case("edit/video-missing", edit(video="{tmp}/none.npy"), "video file not found"),
    case("edit/video-frames", edit(video="{inputs}/video8.npy"),
         "the input video is 8x32x32 (frames x height x width); this model makes 16x32x32"),
    case("edit/out-is-a-folder", edit(out="{inputs}/empty_dir.mp4"), "is a folder"),
    case("edit/not-a-text-to-video-model", edit(config=("--config", "shapes_tiny:cond")),
         "edit needs a text-to-video model (model.in_channels=3), got model.in_channels=7"),
    # the dispatch itself
    case("upsample/unknown-flag", ("upsample", "--no-such-flag"), ""),
    case("lumiere/unknown-command", ("frobnicate",), "invalid choice: 'frobnicate'"),
]


# ---------------------------------------------------------------------------------------
# The inputs every case may read (and must not change)


def _write_inputs(root: pathlib.Path) -> None:
  (root / "file.txt").write_text("not a folder\n")
  (root / "empty_dir").mkdir()
  (root / "empty_dir.mp4").mkdir()
  (root / "binary.txt").write_bytes(bytes(range(128, 256)) * 4)
  (root / "nul.txt").write_text("a red\0circle\n")
  (root / "text.npy").write_text("not an array\n")
  # A zip header then garbage: what made the old code raise BadZipFile (finding 8).
  (root / "garbage.npz").write_bytes(b"PK\x03\x04" + np.random.default_rng(0).bytes(300))
  with zipfile.ZipFile(root / "keys.npz", "w") as archive:
    archive.writestr("captions.npy", b"junk")
  configs = {
      "syntax.py": "def get_config(:\n",
      "eval_syntax.py": "def get_config(arg=None):\n  del arg\n  eval('1 +')\n",
      "raises.py": ("import ml_collections\n\ndef get_config(arg=None):\n"
                    "  raise RuntimeError(f'no such variant {arg!r}')\n"),
      "returns_int.py": "def get_config(arg=None):\n  return 5\n",
      "exits.py": "import sys\nsys.exit(3)\n",
      "foreign.py": ("import ml_collections\n\ndef get_config(arg=None):\n"
                     "  return ml_collections.ConfigDict({'a': 1})\n"),
  }
  for name, text in configs.items():
    (root / name).write_text(text)
  for name in ("junk", "ckfile", "metricsdir"):
    (root / name).mkdir()
  (root / "junk" / "checkpoints" / "7").mkdir(parents=True)
  (root / "junk" / "checkpoints" / "7" / "notes.txt").write_text("my notes\n")
  (root / "ckfile" / "checkpoints").write_text("not a folder\n")
  (root / "metricsdir" / "metrics.jsonl").mkdir()
  _write_application_inputs(root)


def _write_application_inputs(root: pathlib.Path) -> None:
  """Images, videos and masks for the application commands (shapes_tiny: 16 x 32x32)."""
  rng = np.random.default_rng(0)
  for size in (8, 32):
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        root / f"image{size}.png")
    Image.fromarray(np.where(rng.random((size, size)) > 0.5, 255, 0).astype(np.uint8)).save(
        root / f"mask{size}.png")
  Image.fromarray(np.full((8, 8, 3), 9, np.uint8)).save(root / "image8.jpg")
  Image.fromarray(np.arange(32 * 32).reshape(32, 32).astype(np.uint8)).save(root / "grey.png")
  (root / "fake.png").write_text("not a picture\n")
  for frames in (8, 16):
    np.save(root / f"video{frames}.npy", rng.integers(0, 256, (frames, 32, 32, 3),
                                                      dtype=np.uint8))
  np.save(root / "twos.npy", np.full((16, 32, 32), 2, np.int64))
  np.save(root / "flat.npy", np.zeros((32, 32), bool))
  np.save(root / "mask8frames.npy", np.zeros((8, 32, 32), bool))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp("inputs")
  _write_inputs(root)
  data_dir = support.build_dataset(root / "data")
  support.save_random_checkpoint(support.micro_config("t2i", f"train.data_dir={data_dir}"),
                                 root / "ckpt", 4, data_dir)
  shutil.copytree(root / "ckpt", root / "mixed")
  (root / "mixed" / "checkpoints" / "9").mkdir()
  (root / "mixed" / "checkpoints" / "9" / "notes.txt").write_text("my notes\n")
  return root


def snapshot(*roots) -> dict:
  """Every file (sha256) and folder under `roots`."""
  found = {}
  for root in roots:
    for path in sorted(pathlib.Path(root).rglob("*")):
      found[str(path)] = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file()
                          else "folder")
  return found


def run_cli(capsys, argv) -> tuple:
  try:
    code = cli.main(list(argv))
  except SystemExit as e:  # argparse exits from inside the parser
    code = e.code
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.fixture()
def no_model_loads(monkeypatch):
  """Fails the test if a model is loaded (the refusal must come first)."""
  def refuse(**kwargs):
    raise AssertionError(f"a model was loaded ({kwargs}) before the input was refused")

  monkeypatch.setattr(weights, "load_model", refuse)


def test_the_suite_covers_every_subcommand_with_enough_cases():
  commands = {c.argv[0] for c in CASES}
  assert set(cli.SUBCOMMANDS) <= commands and len(CASES) >= 60


@pytest.mark.parametrize("bad", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(bad, inputs, tmp_path, capsys,
                                                           monkeypatch, request):
  if not bad.loads_model:
    request.getfixturevalue("no_model_loads")
  monkeypatch.chdir(tmp_path)
  argv = [a.format(inputs=inputs, tmp=tmp_path) for a in bad.argv]
  before = snapshot(inputs, tmp_path)
  code, out, err = run_cli(capsys, argv)
  lines = err.strip().splitlines()
  assert code == 2, err
  assert len(lines) == 1 and "Traceback" not in err, err
  assert lines[0].startswith(f"lumiere {bad.argv[0]}" if bad.argv[0] in cli.SUBCOMMANDS
                             else "lumiere"), lines[0]
  assert bad.message.format(inputs=inputs, tmp=tmp_path) in lines[0], lines[0]
  assert out == ""
  assert snapshot(inputs, tmp_path) == before


# ---------------------------------------------------------------------------------------
# Findings that need more than one line of stderr or a process of their own


def test_debug_shows_the_traceback_above_the_same_line(inputs, tmp_path, capsys,
                                                       monkeypatch):
  """Finding 9: user code that fails is one line naming file and line; --debug (anywhere)
  or LUMIERE_DEBUG=1 adds the traceback, ending in the user's own frame."""
  argv = ["train", "--config", str(inputs / "raises.py"), "--workdir", str(tmp_path / "w")]
  code, _, plain = run_cli(capsys, argv)
  assert code == 2 and "Traceback" not in plain
  for extra, env in ((["--debug"], None), ([], "1")):
    if env:
      monkeypatch.setenv(DEBUG_ENV, env)
    code, _, err = run_cli(capsys, argv + extra)
    assert code == 2 and "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1] == plain.strip()
    assert f'File "{inputs / "raises.py"}", line 4, in get_config' in err


def test_a_failing_shapes_build_leaves_no_folder_behind(inputs, tmp_path, capsys):
  """Finding 15: a build that fails half-way (a caption missing from the embedding
  table) removes the folders it made, not just its staging folder."""
  from lumiere_jax.data.text_embeddings import save_text_embeddings
  table = tmp_path / "table.npz"
  save_text_embeddings(table, ["a red circle moving left"], np.zeros((1, 4, 8)),
                       np.ones((1, 4), bool))
  code, _, err = run_cli(capsys, ["data", "build", "shapes", "--out",
                                  str(tmp_path / "new" / "d"), "--num-videos", "4",
                                  "--frames", "4", "--text-embeddings", str(table)])
  assert code == 2 and "Traceback" not in err
  assert "has no entry for the caption" in err.strip().splitlines()[-1]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["table.npz"]


def test_data_build_says_what_it_does_and_that_nothing_is_downloaded(tmp_path, capfd):
  """Finding 16: no "Downloading and preparing dataset ... Subsequent calls will reuse
  this data" naming a hidden staging folder; one line that says what really happens."""
  assert cli.main(["data", "build", "shapes", "--out", str(tmp_path / "d"),
                   "--num-videos", "2", "--frames", "4"]) == 0
  out, err = capfd.readouterr()
  text = out + err
  assert "Download" not in text and "Subsequent calls" not in text
  assert ".incomplete" not in text
  assert f"building {tmp_path / 'd' / 'shapes' / '1.0.0'}: rendering the shapes clips here " \
         "(nothing is downloaded)" in err
  assert out.strip() == f"wrote {tmp_path / 'd' / 'shapes' / '1.0.0'}"


def test_help_names_the_mask_convention_and_what_is_shipped(capsys):
  """Finding 17: every command has landed (none says it is not available); the mask
  commands say what white means; `demo --help` names what this install really ships."""
  with pytest.raises(SystemExit):
    cli.main(["--help"])
  assert "not available yet" not in capsys.readouterr().out
  for name in ("inpaint", "cinemagraph"):
    with pytest.raises(SystemExit):
      cli.main([name, "--help"])
    assert "1 (white) = FILL" in " ".join(capsys.readouterr().out.split())
  with pytest.raises(SystemExit):
    cli.main(["demo", "--help"])
  text = " ".join(capsys.readouterr().out.split())
  assert "Shipped models in this install:" in text
  for name in weights.shipped_names():
    assert f"{name}: " in text


def test_unknown_prompt_words_are_named_in_a_warning(tmp_path, capsys):
  """Finding 10: a word the model never saw is named on stderr (it is encoded as <unk>)
  and the video is still made."""
  out = tmp_path / "v.npy"
  code, _, err = run_cli(capsys, ["generate", "--prompt", "a purple hexagon moving left",
                                  "--steps", "1", "--quiet", "--out", str(out)])
  assert code == 0, err
  assert ("lumiere generate: warning: words outside the model's vocabulary (encoded as "
          "<unk>, which the model never saw in training): purple, hexagon") in err
  assert np.load(out).dtype == np.uint8


def test_a_train_run_refused_up_front_creates_nothing_and_exits_quietly(inputs, tmp_path):
  """Finding 14, as a process: a missing dataset is refused before the workdir, its
  logs, tensorboard file or checkpoints folder exist, and nothing is printed at exit
  (no orbax traceback from threads left running)."""
  result = subprocess.run(support.lumiere_command(
      "train", "--config", "shapes_tiny:t2i", "--workdir", str(tmp_path / "run"), *MICRO,
      f"--config.train.data_dir={tmp_path / 'nowhere'}"), env=support.subprocess_env(),
      cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"lumiere train: error: dataset folder {tmp_path / 'nowhere'} does not exist"]
  assert list(tmp_path.iterdir()) == []



@pytest.mark.parametrize("problem,xla_flags,overrides,message", [
    ("batch-not-split-by-the-mesh", "", ("mesh.shape=(1,-1,1)",),
     "lumiere train: error: data.batch_size=2 (images) cannot be split over the 3 "
     "devices of mesh axes fsdp=3 (mesh.shape=(1, 3, 1)); use a batch that is a multiple "
     "of 3"),
    ("unknown-xla-option", " --xla_cpu_use_fast_magic=true", (),
     "lumiere train: error: XLA_FLAGS has options this jaxlib ({jaxlib}) does not know: "
     "--xla_cpu_use_fast_magic=true"),
])
def test_a_train_run_that_cannot_fit_the_devices_is_refused_before_anything(
    problem, xla_flags, overrides, message, inputs, tmp_path):
  """Issue 18's bad input, as a process (the device count is known only after
  jax.distributed starts, and XLA aborts the whole process on an option it does not
  know): one line, exit 2, no workdir. Three forced devices."""
  import jaxlib  # pylint: disable=import-outside-toplevel
  del problem
  env = support.subprocess_env(devices=3)
  env["XLA_FLAGS"] += xla_flags
  result = subprocess.run(support.lumiere_command(
      "train", "--config", "shapes_tiny:t2i", "--workdir", str(tmp_path / "run"), *MICRO,
      f"--config.train.data_dir={inputs / 'data'}", *(f"--config.{o}" for o in overrides)),
      env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [message.format(jaxlib=jaxlib.__version__)]
  assert list(tmp_path.iterdir()) == []


def test_a_workdir_whose_checkpoints_is_a_file_is_refused_before_the_run(inputs, tmp_path):
  """Finding 3, as a user meets it (a process of its own): one line, exit 2, and the
  workdir exactly as it was; before the fix, a NotADirectoryError traceback (exit 1) from
  the first save, after the compile and a step."""
  workdir = tmp_path / "run"
  shutil.copytree(inputs / "ckfile", workdir)
  before = snapshot(workdir)
  result = subprocess.run(support.lumiere_command(
      "train", "--config", "shapes_tiny:t2i", "--workdir", str(workdir), *MICRO,
      f"--config.train.data_dir={inputs / 'data'}"), env=support.subprocess_env(),
      cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [
      f"lumiere train: error: workdir {workdir}: checkpoints exists and is not a folder"]
  assert snapshot(workdir) == before
