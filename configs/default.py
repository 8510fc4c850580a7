"""Default: the Fashion-MNIST MLP VAE (784-400-20-400-784), Bernoulli decoder, dynamic binarisation.

A research baseline that trains in minutes on a 2-core CPU. Variants import this file and change a
few fields; every field can be overridden on the command line, e.g. `--config.train.beta=4`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "fashion_mnist"  # any TFDS image data set: mnist, kmnist, emnist/letters, ...
    # TFDS data dir; "" means TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets).
    config.data.data_dir = ""
    config.data.train_split = "train"  # TFDS split syntax, e.g. "train[:1024]" for a small slice
    config.data.test_split = "test"
    config.data.binarize = "dynamic"  # dynamic | static | none
    config.data.test_binarize_seed = 1234  # the test set is binarised once with this seed, for every run

    config.model = ml_collections.ConfigDict()
    config.model.arch = "mlp"  # mlp | conv
    config.model.likelihood = "bernoulli"
    config.model.latent_dim = 20
    config.model.hidden_dims = (400,)  # MLP hidden layers
    config.model.conv_channels = (32, 64)  # conv: channels of the stride-2 convolutions

    config.train = ml_collections.ConfigDict()
    config.train.num_epochs = 50
    config.train.batch_size = 128
    config.train.optimizer = "adam"  # adam | adamw
    config.train.learning_rate = 1e-3
    config.train.lr_schedule = "constant"  # constant | cosine | warmup_cosine
    config.train.warmup_epochs = 0.0  # learning-rate warm-up, for warmup_cosine
    config.train.weight_decay = 0.0  # adamw only
    config.train.grad_clip_norm = 0.0  # 0 disables clipping by global norm
    config.train.beta = 1.0  # weight of the KL term
    config.train.kl_warmup_epochs = 0.0  # beta rises linearly from 0 over this many epochs
    config.train.free_bits = 0.0  # per-dimension KL floor in nats (Kingma et al., 2016); 0 disables
    # scan: the whole epoch is one compiled program; steps: one per step; auto: steps for conv on CPU.
    config.train.epoch_loop = "auto"
    config.train.checkpoint_every_epochs = 1
    config.train.keep_checkpoints = 3

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1000
    config.eval.every_epochs = 1
    config.eval.active_unit_threshold = 0.01  # Burda et al.: Cov_x(E_q[z_u|x]) > 0.01

    return config
