"""The classic small VAE: MLP 784-400-20-400-784 with ReLU, Adam 1e-3 constant, batch 128, 50
epochs, no validation split, no EMA or warm-up. Benchmarks, the tests and the comparison with
PyTorch use it; it sets every field in which configs/default.py's recipe differs."""

from configs import default


def get_config():
    config = default.get_config()
    config.data.train_split = "train"
    config.data.validation_split = ""
    config.model.arch = "mlp"
    config.model.hidden_dims = (400,)
    config.model.latent_dim = 20
    config.model.activation = "relu"
    config.model.kernel_init = "lecun_normal"
    config.model.log_var_clip = ()
    config.model.prior = "standard_normal"
    config.model.init_output_bias = False
    config.train.batch_size = 128
    config.train.num_epochs = 50
    config.train.optimizer = "adam"
    config.train.learning_rate = 1e-3
    config.train.lr_schedule = "constant"
    config.train.final_lr_fraction = 0.0
    config.train.warmup_epochs = 0.0
    config.train.normalize_grads = False
    config.train.ema_decay = 0.0
    config.train.objective = "elbo"
    config.train.num_samples = 1
    config.train.beta = 1.0
    config.train.kl_warmup_epochs = 0.0
    config.train.free_bits = 0.0
    config.train.early_stopping_patience = 0
    config.train.checkpoint_every_epochs = 1
    return config
