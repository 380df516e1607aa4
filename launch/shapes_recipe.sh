#!/usr/bin/env bash
# The shipped tiny models' recipe: data, t2i, t2v, export, eval, in resumable stages.
#
#   bash launch/shapes_recipe.sh RUNS_DIR [STAGE...]
#
# Stages (default: all, in order): data t2i t2i_more t2v t2v_full t2v_more t2v_last t2v_low
# t2v_two t2v_mix t2v_ground_temporal t2v_batch8 t2v_low_mix export eval (t2v starts from t2i, as the shipped shapes_t2v did; t2v_graft, a trial, from
# t2i_more and t2v_last, t2v_graft_full from t2v_graft, t2v_bind, a trial with a caption
# adapter, from t2v_two, t2v_drop, a trial with the temporal layers' own caption view,
# from t2v_mix, t2v_local, a trial with per-position FiLMs, from t2v_drop, t2v_scratch, a trial with all
# of those from t2i_more, t2v_parts, a trial with per-position FiLMs reading one token per
# object, from t2v_mix, t2v_pool, the conv blocks' FiLM pooled per position and
# grounded, from t2v_mix, t2v_ground_parts, those pools grounded on one token per
# object, from t2v_mix, everything trained, t2v_level_attention, temporal attention at
# each pixel of the fine levels, from t2v_batch8, t2v_frame_noise, noise correlated
# across frames, from t2v_batch8, t2v_frame_mass, a loss on the clip's mass drift,
# from t2v_batch8, and t2v_grid_attention, space-time attention on a pooled grid of the
# fine levels, from t2v_frame_mass). The applications'
# models are stages of their own, run after those (not by default): cond (the
# conditional <J, C, M> model, from t2v_last), style (a backbone fine-tuned on outlined
# shapes, from t2v_last; it builds its dataset first), keyframes (the keyframe model of
# the keyframes + TSR baseline, whose TSR model is cond's), ssr (the x4 spatial
# super-resolution model, 32 -> 128, on a 128x128 dataset it builds first), ssr_x2 (x2,
# 32 -> 64, from the shipped shapes_ssr, on a 64x64 dataset it builds first) and export_apps
# (cond, style and the SSR models as named models), e.g.
# `bash launch/shapes_recipe.sh RUNS cond style ssr ssr_x2 export_apps`.
# Every training stage runs at
# most STAGE_MINUTES (default 90) and is then stopped with SIGTERM, which checkpoints;
# running the same command again resumes from the workdir's newest checkpoint, so the
# recipe is re-runnable until every stage is complete. On 2 CPU cores (AMD EPYC):
# t2i about 15 min, each t2v stage about 75-100 min (docs/learning_record.md has the measured times).
# `LUMIERE_CPU_DEVICES=cores bash launch/shapes_recipe.sh RUNS` gives each core an XLA:CPU
# device and a share of every batch: stage 8 (t2v_batch8) took 9-12% more steps per hour
# that way on a 2-core Intel Xeon (benchmarks/RESULTS.md, "One XLA:CPU device per core").
#
# The t2v options beyond the paper's layout, with what each measured, are in
# docs/learning_record.md ("Ablations"): space-time attention at the coarsest level,
# training mass at high noise (train_logsnr_shift = -log 256), 30% two-object clips (80%
# in t2v_two, 50% in the last stage, t2v_mix), a caption adapter trained at 20x the rate
# (t2v_mix); the conv blocks' FiLM pooling one token per object, grounded on it, with
# only the temporal layers and the pools trained (t2v_ground_temporal), then again with 8
# clips per step (t2v_batch8); the low-noise expert fine-tuned whole on the 50% mix
# (t2v_low_mix).
set -euo pipefail
RUNS=${1:?usage: shapes_recipe.sh RUNS_DIR [STAGE...]}
shift
STAGES=${*:-data t2i t2i_more t2v t2v_full t2v_more t2v_last t2v_low t2v_two t2v_mix t2v_ground_temporal t2v_batch8 t2v_low_mix export eval}
MINUTES=${STAGE_MINUTES:-90}
DATA=$RUNS/data/shapes16
TWO_DATA=$RUNS/data/shapes16_two
MIX_DATA=$RUNS/data/shapes16_half
STYLE_DATA=$RUNS/data/shapes16_outlined
SSR_DATA=$RUNS/data/shapes128
SSR2_DATA=$RUNS/data/shapes64
HELD_OUT=("red triangle moving left" "green circle moving right" "blue square moving up"
          "yellow triangle moving down" "magenta circle bouncing around" "cyan square growing"
          "white circle shrinking" "red square standing still")

# staged CMD...: CMD for at most MINUTES minutes, then SIGTERM (which checkpoints). A
# --config.KEY=VALUE given again later in CMD is dropped where it first appears: the
# functions below give their defaults first and a stage's overrides win (lumiere itself
# refuses a field given twice).
staged() {
  local -a args=("$@") cmd=()
  local i j
  for ((i = 0; i < ${#args[@]}; i++)); do
    if [[ ${args[i]} == --config.*=* ]]; then
      for ((j = i + 1; j < ${#args[@]}; j++)); do
        [[ ${args[j]%%=*} == "${args[i]%%=*}" ]] && continue 2
      done
    fi
    cmd+=("${args[i]}")
  done
  timeout --signal=TERM --kill-after=120 "${MINUTES}m" "${cmd[@]}" || [ $? -eq 124 ]
}

# t2v_data DIR CLIPS TWO_OBJECT_FRACTION HELD_OUT_CLIPS: a 32x32, 16-frame dataset (once)
# without the recipe's held-out combinations.
t2v_data() {
  local held_out=()
  for c in "${HELD_OUT[@]}"; do held_out+=(--held-out "$c"); done
  [ -d "$1" ] || lumiere data build shapes --out "$1" --num-videos "$2" --resolution 32 \
      --frames 16 --two-object-fraction "$3" --held-out-videos "$4" "${held_out[@]}"
}

# ssr_data DIR RESOLUTION: the SSR stages' dataset (once): 2048 clips of 16 frames, the
# recipe's held-out combinations, 64 held-out clips.
ssr_data() {
  local held_out=()
  for c in "${HELD_OUT[@]}"; do held_out+=(--held-out "$c"); done
  [ -d "$1" ] || lumiere data build shapes --out "$1" --num-videos 2048 --resolution "$2" \
      --frames 16 --two-object-fraction 0.3 --held-out-videos 64 "${held_out[@]}"
}

# first_stage VARIANT WORKDIR [INIT [DATA_DIR [OVERRIDE...]]]: the temporal layers on video
# from INIT (default t2i; backbone frozen); OVERRIDEs (--config.a.b=v) come last and win.
first_stage() {
  staged lumiere train --config "shapes_tiny:$1" --workdir "$RUNS/$2" \
      --config.train.data_dir="${4:-$DATA}" --config.train.init_checkpoint="$RUNS/${3:-t2i}" \
      --config.train.num_steps=3000 --config.data.batch_size=4 \
      --config.train.learning_rate=1e-3 --config.train.warmup_steps=50 \
      --config.train.ema_decay=0.998 --config.train.checkpoint_every=100 \
      --config.train.log_every=10 --config.diffusion.train_logsnr_shift=-5.545 \
      --config.model.temporal.spacetime_attention=True "${@:5}"
}

# fine_tune WORKDIR INIT STEPS LR [VARIANT [DATA_DIR [OVERRIDE...]]]: the whole STUNet but
# the text encoder, on video, from INIT's EMA (the t2v_full stage and those after it);
# OVERRIDEs (--config.a.b=v) come last and win.
fine_tune() {
  staged lumiere train --config "shapes_tiny:${5:-t2v}" --workdir "$RUNS/$1" \
      --config.train.data_dir="${6:-$DATA}" --config.train.init_checkpoint="$RUNS/$2" \
      --config.train.num_steps="$3" --config.data.batch_size="${BATCH:-4}" \
      --config.train.learning_rate="$4" --config.train.warmup_steps=50 \
      --config.train.ema_decay=0.998 --config.train.checkpoint_every=100 \
      --config.train.log_every=10 --config.diffusion.train_logsnr_shift=-4.1589 \
      --config.model.temporal.spacetime_attention=True \
      '--config.train.trainable=("backbone","temporal")' "${@:7}"
}

# ground_parts WORKDIR OVERRIDE...: stage 6 (t2v_mix) with its conv blocks' FiLM pooling
# per position over the temporal layers' caption and one token per " and "-part, grounded
# on the part tokens, 900 steps at lr 1e-4, EMA 0.995, on the 50% mix; the OVERRIDEs say
# which groups train (stops 52-53).
ground_parts() {
  t2v_data "$MIX_DATA" 8192 0.5 128
  fine_tune "$1" t2v_mix 900 1e-4 t2v "$MIX_DATA" \
      --config.model.temporal.text_adapter_layers=1 \
      --config.model.temporal.film_pooling=attention \
      --config.model.temporal.caption_parts=2 \
      --config.train.grounding_weight=0.5 "--config.train.grounding_groups=('film_pool',)" \
      --config.train.ema_decay=0.995 "${@:2}"
}

# grounded_batch8 WORKDIR INIT STEPS [OVERRIDE...]: t2v_ground_temporal's model and
# recipe (the temporal layers and the pools trained, the pools at 20x, grounded on the
# part tokens, EMA 0.995) from INIT's EMA with 8 clips per step, lr 1e-4, on the 50% mix;
# the OVERRIDEs come last and win (stops 55, 57).
grounded_batch8() {
  t2v_data "$MIX_DATA" 8192 0.5 128
  BATCH=8 fine_tune "$1" "$2" "$3" 1e-4 t2v "$MIX_DATA" \
      --config.model.temporal.text_adapter_layers=1 \
      --config.model.temporal.film_pooling=attention \
      --config.model.temporal.caption_parts=2 \
      --config.train.grounding_weight=0.5 "--config.train.grounding_groups=('film_pool',)" \
      --config.train.ema_decay=0.995 \
      '--config.train.trainable=("temporal","film_pool")' \
      '--config.train.learning_rate_scales=("film_pool=20",)' "${@:4}"
}

for stage in $STAGES; do
  case $stage in
    data)
      t2v_data "$DATA" 16384 0.3 256
      ;;
    t2i)
      staged lumiere train --config shapes_tiny:t2i --workdir "$RUNS/t2i" \
          --config.train.data_dir="$DATA" --config.train.num_steps=1600 \
          --config.data.batch_size=16 --config.train.learning_rate=1e-3 \
          --config.train.warmup_steps=50 --config.train.checkpoint_every=200 \
          --config.train.log_every=20
      ;;
    t2i_more)
      # The t2i stage drew rounded squares (benchmarks/t2i_shapes.py: shape 0.62); 6000
      # more steps from its EMA at lr 5e-4 draw them square (0.86). Ships as shapes_t2i.
      staged lumiere train --config shapes_tiny:t2i --workdir "$RUNS/t2i_more" \
          --config.train.data_dir="$DATA" --config.train.init_checkpoint="$RUNS/t2i" \
          --config.train.num_steps=6000 --config.data.batch_size=16 \
          --config.train.learning_rate=5e-4 --config.train.warmup_steps=50 \
          --config.train.ema_decay=0.999 --config.train.checkpoint_every=500 \
          --config.train.log_every=20
      ;;
    t2v_graft)
      # Trial (not shipped yet): t2v_last's temporal layers over t2i_more's backbone,
      # the backbone frozen again (the paper's layout), so the video model draws as well as
      # t2i_more does (docs/learning_record.md).
      staged lumiere train --config shapes_tiny:t2v --workdir "$RUNS/t2v_graft" \
          --config.train.data_dir="$DATA" --config.train.init_checkpoint="$RUNS/t2i_more" \
          "--config.train.init_group_checkpoints=('temporal=$RUNS/t2v_last',)" \
          --config.train.num_steps=2400 --config.data.batch_size=4 \
          --config.train.learning_rate=5e-4 --config.train.warmup_steps=50 \
          --config.train.ema_decay=0.998 --config.train.checkpoint_every=100 \
          --config.train.log_every=10 --config.diffusion.train_logsnr_shift=-4.1589 \
          --config.model.temporal.spacetime_attention=True
      ;;
    t2v_graft_full)
      # Trial after t2v_graft (not shipped): the whole STUNet but the text encoder, as in
      # t2v_full, from t2v_graft's EMA (docs/learning_record.md: shape 0.67, motion 0.53).
      fine_tune t2v_graft_full t2v_graft 2400 3e-4
      ;;
    t2v_low)
      # The low-noise expert (eDiff-I's expert denoisers; not in the paper): t2v_last's
      # temporal layers over t2i_more's frozen backbone, trained at t <= 0.6 only.
      # shapes_t2v hands it the sampling steps at t <= 0.4 (diffusion.expert_switch), so
      # stage 4 decides where objects go and t2i_more's backbone draws them
      # (docs/learning_record.md, "A low-noise expert").
      staged lumiere train --config shapes_tiny:t2v --workdir "$RUNS/t2v_low" \
          --config.train.data_dir="$DATA" --config.train.init_checkpoint="$RUNS/t2i_more" \
          "--config.train.init_group_checkpoints=('temporal=$RUNS/t2v_last',)" \
          --config.train.num_steps=3000 --config.data.batch_size=4 \
          --config.train.learning_rate=5e-4 --config.train.warmup_steps=50 \
          --config.train.ema_decay=0.998 --config.train.checkpoint_every=100 \
          --config.train.log_every=10 --config.diffusion.train_t_max=0.6 \
          --config.model.temporal.spacetime_attention=True
      ;;
    t2v)
      first_stage t2v t2v
      ;;
    t2v_full)
      # Stage 2: the whole STUNet (backbone and temporal layers; the text encoder stays
      # frozen) fine-tuned on video from the t2v stage's EMA, with the milder shift -log 64.
      fine_tune t2v_full t2v 3200 5e-4
      ;;
    t2v_more)
      # Stage 3: stage 2 again from its EMA at a lower rate.
      fine_tune t2v_more t2v_full 3200 3e-4
      ;;
    t2v_last)
      # Stage 4: stage 3 again, shorter, at a lower rate.
      fine_tune t2v_last t2v_more 2400 2e-4
      ;;
    t2v_two)
      # Stage 5: stage 4 on two-object-heavy clips (80% against the data
      # stage's 30%), same recipe otherwise. Stage 4 followed one-object prompts and not two
      # (docs/learning_record.md, "Stage 5"). Stage 6 starts from step 2000 of 2400.
      t2v_data "$TWO_DATA" 4096 0.8 64
      fine_tune t2v_two t2v_last 2400 2e-4 t2v "$TWO_DATA"
      ;;
    t2v_bind)
      # A trial, not shipped: stage 5's step 2000 with a one-layer caption
      # adapter (model.temporal.text_adapter_layers, zero-initialised) trained with the
      # STUNet on the same two-object-heavy clips, at 20x the STUNet's rate, to bind each
      # motion word to its object. Two-object prompts gained, one-object ones lost
      # (docs/learning_record.md, "Stop 36"; run there to step 423).
      fine_tune t2v_bind t2v_two/checkpoints/2000 450 1e-4 t2v "$TWO_DATA" \
          --config.model.temporal.text_adapter_layers=1 \
          '--config.train.trainable=("backbone","temporal","adapter")' \
          '--config.train.learning_rate_scales=("adapter=20",)' \
          --config.train.checkpoint_every=50
      ;;
    t2v_mix)
      # Stage 6 (what ships): stage 5's step 2000 with a one-layer caption adapter
      # (model.temporal.text_adapter_layers, zero-initialised) trained at 20x the STUNet's
      # rate (lr 1e-4; the adapter 2e-3), 900 steps on a 50% two-object mix, so one-object
      # prompts keep what stage 5 learnt while two-object prompts gain
      # (docs/learning_record.md, "Stop 37").
      t2v_data "$MIX_DATA" 8192 0.5 128
      fine_tune t2v_mix t2v_two/checkpoints/2000 900 1e-4 t2v "$MIX_DATA" \
          --config.model.temporal.text_adapter_layers=1 \
          '--config.train.trainable=("backbone","temporal","adapter")' \
          '--config.train.learning_rate_scales=("adapter=20",)'
      ;;
    t2v_drop)
      # Stage 7 (stop 41): stage 6 with its temporal layers reading the caption without the
      # shape names (model.temporal.caption_drop_words; the backbone reads it whole), so a
      # held-out (colour, shape, motion) prompt is a seen (colour, motion) pair to them:
      # 1000 steps of stage 6's recipe at lr 2e-4. A trial, not shipped: one-object prompts
      # gained, two-object ones lost (docs/learning_record.md, "Stop 41").
      t2v_data "$MIX_DATA" 8192 0.5 128
      fine_tune t2v_drop t2v_mix 1000 2e-4 t2v "$MIX_DATA" \
          --config.model.temporal.text_adapter_layers=1 \
          '--config.model.temporal.caption_drop_words=("circle","square","triangle")' \
          '--config.train.trainable=("backbone","temporal","adapter")' \
          '--config.train.learning_rate_scales=("adapter=20",)'
      ;;
    t2v_local)
      # A trial (stop 42): t2v_drop with a per-position FiLM in every conv inflation block
      # (model.temporal.local_film: each (frame, row, column) reads the caption through a
      # cross-attention, so two objects can get two motions), the new group and the
      # adapter at 20x, 1200 steps at lr 1e-4 (docs/learning_record.md, "Stop 42").
      t2v_data "$MIX_DATA" 8192 0.5 128
      fine_tune t2v_local t2v_drop 1200 1e-4 t2v "$MIX_DATA" \
          --config.model.temporal.text_adapter_layers=1 --config.model.temporal.local_film=True \
          '--config.model.temporal.caption_drop_words=("circle","square","triangle")' \
          '--config.train.trainable=("backbone","temporal","adapter","local_film")' \
          '--config.train.learning_rate_scales=("adapter=20","local_film=20")'
      ;;
    t2v_parts)
      # A trial (stop 49): stage 6 with per-position FiLMs (model.temporal.local_film) and
      # the temporal layers' caption followed by one pooled token per part of it, cut at
      # "and" (model.temporal.caption_parts): each token holds one object's words, so a
      # position that finds its object's colour there reads its motion in the same
      # cross-attention. 900 steps at lr 1e-4, adapter and local FiLMs at 20x
      # (docs/learning_record.md, "Stop 49").
      t2v_data "$MIX_DATA" 8192 0.5 128
      fine_tune t2v_parts t2v_mix 900 1e-4 t2v "$MIX_DATA" \
          --config.model.temporal.text_adapter_layers=1 --config.model.temporal.local_film=True \
          --config.model.temporal.caption_parts=2 \
          '--config.train.trainable=("backbone","temporal","adapter","local_film")' \
          '--config.train.learning_rate_scales=("adapter=20","local_film=20")'
      ;;
    t2v_pool)
      # A trial (stop 50): stage 6 with its conv blocks' FiLM, where the STUNet reads
      # motion, pooling the caption per position (model.temporal.film_pooling=attention)
      # and the grounding loss keeping each object's positions on its own words
      # (train.grounding_weight). 900 steps at lr 1e-4, adapter and pools at 20x
      # (docs/learning_record.md, "Stop 50", "Stop 51": with the all-words share, swapping
      # who moves how cost +1.5% at step 400; the loss is now a share per word role).
      t2v_data "$MIX_DATA" 8192 0.5 128
      fine_tune t2v_pool t2v_mix 900 1e-4 t2v "$MIX_DATA" \
          --config.model.temporal.text_adapter_layers=1 \
          --config.model.temporal.film_pooling=attention \
          --config.train.grounding_weight=0.1 \
          '--config.train.trainable=("backbone","temporal","adapter","film_pool")' \
          '--config.train.learning_rate_scales=("adapter=20","film_pool=20")'
      ;;
    t2v_ground_parts)
      # A trial (stop 52): stage 6 with its conv blocks' FiLM pooling per position over the
      # temporal layers' caption and one token per " and "-part (film_pooling=attention,
      # caption_parts=2), and the grounding loss on the pools' part tokens: each object's
      # positions read their own part's token, which holds its colour and its motion
      # (train.grounding_groups=('film_pool',)). 900 steps at lr 1e-4, EMA 0.995, adapter
      # and pools at 20x (docs/learning_record.md, "Stop 52": the first run in which
      # swapping who moves how costs the model, +57.7% at t = 0.9 at step 900; exported as
      # the named trial shapes_t2v_parts).
      ground_parts t2v_ground_parts \
          '--config.train.trainable=("backbone","temporal","adapter","film_pool")' \
          '--config.train.learning_rate_scales=("adapter=20","film_pool=20")'
      ;;
    t2v_ground_temporal)
      # Stop 53, ships as shapes_t2v: t2v_ground_parts with the caption adapter and the 2D
      # backbone frozen (only the temporal layers and the pools trained, the pools at 20x):
      # the adapter at 20x was what cost the one-object prompts their colours and shapes
      # (docs/learning_record.md, "Stop 53").
      ground_parts t2v_ground_temporal '--config.train.trainable=("temporal","film_pool")' \
          '--config.train.learning_rate_scales=("film_pool=20",)'
      ;;
    t2v_batch8)
      # Stop 55, ships as shapes_t2v: t2v_ground_temporal's recipe again from its EMA, 900
      # steps with 8 clips per step (43 min on a 2-core Intel(R) Xeon(R) Processor): 64 held-out prompts 0.78 /
      # 0.88 / 0.76 -> 0.80 / 0.90 / 0.80, where the same stage at batch 4 gave 0.76 /
      # 0.89 / 0.75 (docs/learning_record.md, "Stop 55").
      grounded_batch8 t2v_batch8 t2v_ground_temporal 900
      ;;
    t2v_level_attention)
      # A trial (stop 57), from t2v_batch8: its recipe with temporal attention at each pixel
      # after the conv blocks of levels 0 and 1 (model.temporal.attention_levels, group
      # level_attention at 10x), 800 steps (64 min on a 2-core Intel(R) Xeon(R) Processor): jitter 4.3x -> 3.3x
      # and the largest step 3.7x -> 2.45x ground truth's, area stability 13.7x -> 13.1x,
      # two-object shape 0.50 -> 0.38 (docs/learning_record.md, "Stop 57"; not shipped).
      grounded_batch8 t2v_level_attention t2v_batch8 800 \
          "--config.model.temporal.attention_levels=(0, 1)" \
          '--config.train.trainable=("temporal","film_pool","level_attention")' \
          '--config.train.learning_rate_scales=("film_pool=20","level_attention=10")'
      ;;
    t2v_frame_noise)
      # A trial (stop 58), from t2v_batch8: its recipe with the noise correlated across
      # frames (diffusion.frame_noise_correlation=0.5, PYoCo's mixed prior), 900 steps (60 min
      # on a 2-core Intel(R) Xeon(R) Processor): 64 held-out prompts 0.80 / 0.90 / 0.80 ->
      # 0.72 / 0.82 / 0.64, area stability 13.7x -> 14.3x ground truth's
      # (docs/learning_record.md, "Stop 58"; not shipped).
      grounded_batch8 t2v_frame_noise t2v_batch8 900 \
          --config.diffusion.frame_noise_correlation=0.5
      ;;
    t2v_frame_mass)
      # A trial (stop 59), from t2v_batch8: its recipe with a loss term on the drift over
      # the frames of the x0 error's per-frame mean (diffusion.frame_mass_weight=100), 900
      # steps (56 min on a 2-core Intel(R) Xeon(R) Processor): 64 held-out prompts 0.80 /
      # 0.90 / 0.80 -> 0.82 / 0.94 / 0.81, area stability 13.7x -> 15.4x ground truth's
      # (docs/learning_record.md, "Stop 59"; not shipped).
      grounded_batch8 t2v_frame_mass t2v_batch8 900 --config.diffusion.frame_mass_weight=100
      ;;
    t2v_grid_attention)
      # A trial (stop 59), from t2v_frame_mass: its recipe with space-time attention on an
      # 8 x 8 pooled grid after the conv blocks of levels 0 and 1
      # (model.temporal.attention_grid, group level_attention at 10x), 800 steps planned,
      # stopped and measured at step 400 (5.7 s/step on a 2-core Intel(R) Xeon(R)
      # Processor): 64 held-out prompts 0.82 / 0.94 / 0.78, area stability 16.2x ground
      # truth's (docs/learning_record.md, "Stop 59"; not shipped).
      grounded_batch8 t2v_grid_attention t2v_frame_mass 800 \
          --config.diffusion.frame_mass_weight=100 \
          "--config.model.temporal.attention_levels=(0, 1)" \
          --config.model.temporal.attention_grid=8 \
          '--config.train.trainable=("temporal","film_pool","level_attention")' \
          '--config.train.learning_rate_scales=("film_pool=20","level_attention=10")'
      ;;
    t2v_scratch)
      # A trial (stop 43): the t2v stage again, from t2i_more, with what stops 37-42 added
      # from the start instead of as fine-tunes: the 50% two-object mix, the caption adapter,
      # the temporal layers' caption without the shape names, and per-position FiLMs
      # (docs/learning_record.md, "Stop 43").
      t2v_data "$MIX_DATA" 8192 0.5 128
      first_stage t2v t2v_scratch t2i_more "$MIX_DATA" \
          --config.model.temporal.text_adapter_layers=1 --config.model.temporal.local_film=True \
          '--config.model.temporal.caption_drop_words=("circle","square","triangle")' \
          '--config.train.trainable=("temporal","adapter","local_film")'
      ;;
    t2v_low_mix)
      # The low-noise expert (what ships as shapes_t2v_low): t2v_low's EMA, backbone and
      # temporal layers trained together (t2v_low froze the backbone), on the 50% mix, at
      # t <= 0.6 only (no shift), 1300 steps at lr 2e-4 (docs/learning_record.md, "Stop 38").
      t2v_data "$MIX_DATA" 8192 0.5 128
      fine_tune t2v_low_mix t2v_low 1300 2e-4 t2v "$MIX_DATA" \
          --config.diffusion.train_logsnr_shift=0 --config.diffusion.train_t_max=0.6
      ;;
    cond)
      # t2v_last's weights with the first convolution widened from 3 to 7 input channels
      # (the new weights zero, so it starts as the base model), fine-tuned whole but for
      # the text encoder on shapes_tiny:cond's mask mixture (first frame, first and last,
      # keyframes, quarter-rate keyframes, boxes, borders, cinemagraph regions, 10% none).
      # Same layout flags as t2v_last: the checkpoint must fit.
      staged lumiere train --config shapes_tiny:cond --workdir "$RUNS/cond" \
          --config.train.data_dir="$DATA" --config.train.init_checkpoint="$RUNS/t2v_last" \
          --config.train.num_steps=3000 --config.data.batch_size=4 \
          --config.train.learning_rate=5e-4 --config.train.warmup_steps=50 \
          --config.train.ema_decay=0.998 --config.train.checkpoint_every=100 \
          --config.train.log_every=10 --config.diffusion.train_logsnr_shift=-4.1589 \
          --config.model.temporal.spacetime_attention=True
      ;;
    keyframes)
      # The keyframes + TSR baseline's keyframe model (shapes_tiny:keyframes: frames 0,
      # 5, 10, 15, no temporal down-sampling), trained as the STUNet's first two stages.
      first_stage keyframes keyframes
      fine_tune keyframes_full keyframes 3200 5e-4 keyframes
      ;;
    style)
      # The backbone of t2v_last (the shipped model's, which `lumiere stylize`
      # interpolates with) fine-tuned on frames of outlined shapes; text encoder frozen.
      [ -d "$STYLE_DATA" ] || lumiere data build shapes --out "$STYLE_DATA" \
          --num-videos 4096 --resolution 32 --frames 16 --two-object-fraction 0.3 \
          --style outlined
      staged lumiere train --config shapes_tiny:style --workdir "$RUNS/style" \
          --config.train.data_dir="$STYLE_DATA" --config.train.init_checkpoint="$RUNS/t2v_last" \
          --config.train.num_steps=800 --config.data.batch_size=16 \
          --config.train.learning_rate=5e-4 --config.train.warmup_steps=50 \
          --config.train.checkpoint_every=200 --config.train.log_every=20
      ;;
    ssr)
      # shapes_tiny:ssr from scratch: 8-frame windows of 128x128 clips, the low
      # resolution (32x32) area-downsampled in the input pipeline.
      ssr_data "$SSR_DATA" 128
      staged lumiere train --config shapes_tiny:ssr --workdir "$RUNS/ssr" \
          --config.train.data_dir="$SSR_DATA" --config.train.num_steps=1500 \
          --config.data.batch_size=4 --config.train.learning_rate=1e-3 \
          --config.train.warmup_steps=50 --config.train.ema_decay=0.995 \
          --config.train.checkpoint_every=100 --config.train.log_every=10
      ;;
    ssr_x2)
      # shapes_tiny:ssr_x2 from the shipped x4 model (shapes_ssr): 32 -> 64 in the
      # residual form over bicubic upsampling, on a 64x64 dataset with the same held-out
      # combinations.
      ssr_data "$SSR2_DATA" 64
      staged lumiere train --config shapes_tiny:ssr_x2 --workdir "$RUNS/ssr_x2" \
          --config.train.data_dir="$SSR2_DATA" --config.train.init_checkpoint=model:shapes_ssr \
          --config.train.num_steps=4000 --config.data.batch_size=4 \
          --config.train.learning_rate=5e-4 --config.train.warmup_steps=50 \
          --config.train.ema_decay=0.995 --config.train.checkpoint_every=100 \
          --config.train.log_every=10
      ;;
    export_apps)
      lumiere export --checkpoint "$RUNS/cond" --name shapes_cond --out "$RUNS/models" \
          --description "shapes conditional <J, C, M> model (cond stage: animate, inpaint, cinemagraph)"
      lumiere export --checkpoint "$RUNS/style" --name shapes_style_outlined \
          --out "$RUNS/models" --description "shapes backbone fine-tuned on outlined shapes (style stage: stylize)"
      lumiere export --checkpoint "$RUNS/ssr" --name shapes_ssr --out "$RUNS/models" \
          --description "shapes x4 spatial super-resolution, 32 -> 128 (ssr stage: upsample)"
      lumiere export --checkpoint "$RUNS/ssr_x2" --name shapes_ssr_x2 --out "$RUNS/models" \
          --steps 2 --description "shapes x2 spatial super-resolution, 32 -> 64, residual over bicubic (ssr_x2 stage: upsample's default)"
      ;;
    export)
      lumiere export --checkpoint "$RUNS/t2i_more" --name shapes_t2i --out "$RUNS/models" \
          --steps 32 --description "shapes text-to-image U-Net (t2i, t2i_more stages)"
      lumiere export --checkpoint "$RUNS/t2v_low_mix" --name shapes_t2v_low --out "$RUNS/models" \
          --steps 24 --guidance 3 --threshold static \
          --description "shapes t2v low-noise expert (t2v_low, t2v_low_mix stages; shapes_t2v's steps at t <= 0.4)"
      lumiere export --checkpoint "$RUNS/t2v_batch8" --step 900 --name shapes_t2v \
          --out "$RUNS/models" --steps 16 --time-power 2 --guidance 3 --threshold static \
          --expert shapes_t2v_low --expert-switch 0.4 \
          --description "shapes text-to-video STUNet with a caption adapter and FiLM pools grounded on one token per object (t2v, t2v_full, t2v_more, t2v_last, t2v_two, t2v_mix, t2v_ground_temporal, t2v_batch8 stages)"
      ;;
    eval)
      # The pair as exported: t2v_batch8 above t = 0.4, the t2v_low_mix expert at and below.
      lumiere eval shapes --checkpoint "$RUNS/t2v_batch8" --step 900 \
          --expert-checkpoint "$RUNS/t2v_low_mix" \
          --expert-switch 0.4 --num 64 --steps 16 --time-power 2 --guidance 3 \
          --fvd --json "$RUNS/eval_t2v.json" --sheet "$RUNS/eval_t2v.png"
      ;;
    *) echo "unknown stage $stage (data t2i t2i_more t2v_graft t2v_graft_full t2v_low t2v t2v_full t2v_more t2v_last t2v_two t2v_bind t2v_mix t2v_drop t2v_local t2v_parts t2v_pool t2v_ground_parts t2v_ground_temporal t2v_batch8 t2v_level_attention t2v_frame_noise t2v_frame_mass t2v_grid_attention t2v_scratch t2v_low_mix cond keyframes style ssr ssr_x2 export_apps export eval)" >&2
       exit 2 ;;
  esac
done
