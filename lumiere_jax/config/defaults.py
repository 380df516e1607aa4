"""The defaults every config file starts from (`base_config`); a config file overrides
what it changes. The section defaults of lower layers (diffusion, train, data masks)
are assembled here, so that those layers never import the config package."""

import ml_collections

from lumiere_jax.data.masks import DEFAULT_MASK_WEIGHTS
from lumiere_jax.diffusion.config import default_diffusion_config
from lumiere_jax.train.config import default_train_config

# Logical axis name -> mesh axes, tried in order; a rule whose mesh axes are already used
# in the same spec, or that does not divide the dimension, falls through to the next.
DEFAULT_LOGICAL_AXIS_RULES = (
    ("batch", ("data", "fsdp")),
    ("batch", "data"),
    # A batch too small to split leaves the devices free: a clip's frames take them, and
    # where the frames do not divide either (the coarse levels of lumiere_base), its rows
    # and token sequences (the 16 GiB layout, benchmarks/RESULTS.md).
    ("time", ("data", "fsdp")),
    ("time", "fsdp"),  # one clip per data-axis index: mesh (N, 8, 1) at N clips
    ("height", ("data", "fsdp")),
    ("height", "fsdp"),
    ("width", None),
    ("length", ("data", "fsdp")),
    ("length", "fsdp"),
    ("position", None),  # the text encoder's position table (a parameter, not a sequence)
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("conv_t", None),
    ("conv_h", None),
    ("conv_w", None),
    ("norm", None),
)


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every config file; config files override what they change."""
  config = ml_collections.ConfigDict()
  config.stage = "t2v"
  config.seed = 0

  config.model = model = ml_collections.ConfigDict()
  model.kind = "stunet"
  model.in_channels = 3
  model.out_channels = 3
  model.block_out_channels = (32, 64, 64)
  model.layers_per_block = 1
  model.cross_attention_levels = (False, True, True)
  model.num_attention_heads = 4
  model.transformer_layers_per_block = 1
  model.norm_num_groups = 8
  model.norm_eps = 1e-5
  model.cross_attention_dim = 64
  model.flip_sin_to_cos = True
  model.freq_shift = 0
  model.dtype = "float32"
  model.remat = "none"
  model.temporal = temporal = ml_collections.ConfigDict()
  temporal.down_levels = (True, True)
  temporal.kernel_size = 3
  temporal.attention_blocks = 1
  temporal.num_heads = 4
  # Temporal attention blocks cross-attend to the text. In the t2v stage the backbone is
  # frozen and its cross-attention was trained on still images, so the temporal layers are
  # the only trainable place where motion words ("moving left") can steer motion.
  temporal.text_conditioning = True
  # Conv inflation blocks (every level but the coarsest) FiLM-modulated by the pooled
  # caption. Not in the paper, whose conv blocks see no text: per-pixel temporal attention
  # at the coarsest level cannot see where an object is, so "moving left" has no cheap way
  # to steer the (2+1)D convolutions that move it (docs/learning_record.md).
  temporal.conv_text_conditioning = False
  # The attention inflation blocks (coarsest level and mid block) attend over every
  # (frame, row, column) token with frame, row and column embeddings instead of over frames
  # at each pixel. Not in the paper: per-pixel attention cannot see where an object is,
  # while "moving left" is a function of position and frame (shared/notes/MOTION.md).
  temporal.spacetime_attention = False
  # Trainable transformer layers over the frozen text encoder's output, read by every
  # cross-attention and FiLM of the STUNet (parameter group 'adapter'; zero-initialised
  # residual branches, so a trained model's behaviour is unchanged at init). Not in the
  # paper, whose frozen T5 is contextual: the tiny frozen random encoder barely binds a
  # motion word to its object in two-object captions (docs/learning_record.md).
  temporal.text_adapter_layers = 0
  # Words the temporal layers (their FiLM and cross-attention) do not read: they read the
  # caption without them, the backbone reads it whole (the conditioning holds both views,
  # text_lib.CaptionViews). Empty: one caption for both, as in the paper. Dropping the
  # shapes' names (the recipe's t2v_drop trial) makes a held-out (colour, shape, motion)
  # prompt a seen (colour, motion) pair to the temporal layers: one-object prompts gained,
  # two-object ones lost (docs/learning_record.md, "Stop 41"; not shipped).
  temporal.caption_drop_words = ()
  # Each conv inflation block's FiLM also gets a per-position scale and shift: every
  # (frame, row, column) cross-attends to the caption (the temporal layers' view of it) and
  # a zero-initialised projection of what it reads modulates that position (parameter
  # group 'local_film'; unchanged at init). Not in the paper: the pooled caption gives the
  # two objects of a two-object prompt one FiLM, the mean of their two motions. The
  # recipe's t2v_local trial: two-object colour back to the shipped pair's, two-object
  # motion not (docs/learning_record.md, "Stop 42"; not shipped).
  temporal.local_film = False
  # The temporal layers' caption cut at `caption_split_word` into `caption_parts` parts,
  # each encoded on its own and pooled into one more token they read (0: off, as in the
  # paper). A part token holds one object's words only ("a red circle moving left"), so a
  # position that finds its object's colour in it reads that object's motion in the same
  # cross-attention: binding in one hop, where the frozen random encoder's tokens would
  # need two (StructureDiffusion, Feng et al. 2023, encodes noun phrases apart for the
  # same reason). One-part captions read as before. Not in the paper, whose T5 binds.
  # The recipe's t2v_parts trial (with local_film, from the shipped stage 6): two-object
  # motion 0.34 against 0.44 (docs/learning_record.md, "Stop 49"; not shipped).
  temporal.caption_parts = 0
  temporal.caption_split_word = "and"
  # How the conv inflation blocks' FiLM (conv_text_conditioning) reads the caption: "mean",
  # the mean over its tokens, one FiLM per clip (the paper has no FiLM; ours); or
  # "attention", a mean per position weighted by an attention of each block's own
  # (models/temporal.py FiLMPool, parameter group 'film_pool'; equal to "mean" at init).
  # The pooled FiLM is where the STUNet reads motion (zeroing it takes the opposite-motion
  # loss gap from +43% to +1.5%), and the mean of a two-object caption is the mean of two
  # motions; pooled per position and grounded (train.grounding_weight), each object reads
  # its own (docs/learning_record.md, "Stop 50").
  temporal.film_pooling = "mean"
  # Conv levels (0 the finest; each below the coarsest) whose conv inflation blocks are
  # each followed by a temporal attention block without text (over the frames at each
  # pixel), parameter group 'level_attention', identity at init. Not in the paper, whose
  # only temporal attention is at the coarsest level, so that a (2+1)D convolution ties
  # each frame of the fine levels to its neighbours only. On shapes_tiny at levels 0 and
  # 1: jitter 4.3x -> 3.3x ground truth's, area stability 13.7x -> 13.1x, two-object
  # shape down (docs/learning_record.md, "Stop 57"; not shipped).
  temporal.attention_levels = ()
  # 0: those blocks attend over the frames at each pixel. N > 0: over every (frame, row,
  # column) token of the level average-pooled to an N x N grid, their output repeated
  # back to the level's pixels (space-time attention that follows an object across the
  # clip at a cost a pixel's attention would not reach: 16 x 32 x 32 tokens at level 0).
  # Not in the paper; identity at init either way. On shapes_tiny, 8 at levels 0 and 1
  # steadied nothing (area stability 16.2x ground truth's; docs/learning_record.md,
  # "Stop 59"; not shipped).
  temporal.attention_grid = 0

  config.text = text = ml_collections.ConfigDict()
  # A built-in word vocabulary by name ("shapes") or a word list file, one word per line;
  # text.vocab_size (the embedding table) must hold it and its special tokens.
  text.vocabulary = "shapes"
  text.vocab_size = 64
  text.max_length = 24
  text.width = 64
  text.num_layers = 2
  text.num_heads = 4
  text.mlp_ratio = 4

  config.data = data = ml_collections.ConfigDict()
  data.resolution = 32
  data.low_resolution = 0
  data.num_frames = 16
  data.frame_stride = 1  # videos: every k-th frame of a window of (num_frames - 1) k + 1
  data.batch_size = 8  # global batch, split evenly over processes
  data.eval_split = "heldout"
  data.worker_count = 0  # grain worker processes (0: read in the main process)
  data.read_threads = 2
  data.prefetch_batches = 4
  # Conditional (7-channel) stage: how often each mask kind is drawn.
  data.mask_weights = ml_collections.ConfigDict(dict(DEFAULT_MASK_WEIGHTS))

  config.train = default_train_config()
  config.diffusion = default_diffusion_config()

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.axes = ("data", "fsdp", "tensor")
  mesh.shape = (-1, 1, 1)
  config.logical_axis_rules = DEFAULT_LOGICAL_AXIS_RULES
  return config
