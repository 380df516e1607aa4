"""Datasets and input pipelines (see docs/data.md).

  shapes           pure numpy renderer of the synthetic shapes clips (seed -> clip)
  video_files      finding, captioning and decoding users' video files
  text_embeddings  precomputed caption embeddings stored with the clips
  builders         TFDS builders (array_record, read without TensorFlow), build_*()
  pipeline         grain pipelines: shuffle, repeat, shards, batches, workers, resume,
                   global jax.Arrays
  masks            mask samplers for the conditional <J, C, M> fine-tune
  contact_sheet    a picture of a dataset's clips and captions
"""
