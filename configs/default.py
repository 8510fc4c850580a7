"""Default: the best Fashion-MNIST VAE that `make train` finishes in 10 minutes on a quiet 2-core CPU.

The two-level HVAE (z2 on top, z1 below, 40 units each; p(z1|z2) and q(z1|x, z2) Gaussian) on the
published gated MLPs (300-300, mirrored; He-normal weights; log-variances clipped to [-6, 2]), with
a recipe for short training: batch 500, Adam 3e-3 with a cosine decay, KL warm-up over 20 epochs,
an EMA of the parameters for evaluation, the decoder's output bias started at the logits of the
training pixel means; all 60,000 training images, 100 epochs. Bernoulli decoder, dynamic
binarisation, standard-normal prior on z2; both KL terms in closed form. configs/vae.py is the
one-level VAE with the same recipe (docs/results.md compares the two).

Variants import this file and change a few fields (configs/mlp_small.py is the classic 784-400-20
ReLU VAE); every field can be overridden on the command line, e.g. `--config.train.beta=4`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    # Any TFDS image data set (mnist, kmnist, emnist/letters, ...), or folder:PATH, a folder of your
    # own PNG and JPEG images (in class sub-folders for labels): vae/data/folder.py.
    config.data.name = "fashion_mnist"
    # TFDS data dir; "" means TFDS's default (TFDS_DATA_DIR or ~/tensorflow_datasets).
    config.data.data_dir = ""
    config.data.train_split = "train"  # TFDS split syntax, e.g. "train[:1024]" for a small slice
    config.data.test_split = "test"
    # Model selection: a split disjoint from train_split, evaluated every epoch ("" for none). It
    # is binarised once (seed test_binarize_seed + 2), like the test set.
    config.data.validation_split = ""
    # dynamic (a fresh draw per use) | static (drawn once) | none (8-bit pixels, for the 8-bit likelihoods)
    config.data.binarize = "dynamic"
    config.data.test_binarize_seed = 1234  # the test set is binarised once with this seed, for every run
    # folder:PATH only. () keeps the images' size (they must all be one size); (H, W) resizes each,
    # e.g. --config.data.image_size=28,28, or with tile_stride or crops_per_image, the size of the
    # images cut from each (then never resized, and of any size).
    config.data.image_size = ()
    # folder:PATH only: () none, or (SH, SW): train on every image_size tile of each training image on a
    # grid of this stride (centred), e.g. --config.data.image_size=32,32 --config.data.tile_stride=32,32.
    config.data.tile_stride = ()
    # folder:PATH only: 0 none, or N random image_size crops of each training image, drawn afresh every
    # epoch from (crop_seed, epoch). With either, validation and test are the non-overlapping tiles
    # covering the centre of each held-out image.
    config.data.crops_per_image = 0
    config.data.crop_seed = 0
    # folder:PATH only: keep (every image must have the same channels) | grey | rgb (convert each
    # image, so a folder that mixes grey and colour photos trains).
    config.data.channels = "keep"
    # folder:PATH only: the colour transparent pixels are composited onto (white, black, #rrggbb);
    # '' refuses an image with transparent pixels.
    config.data.background = ""
    # folder:PATH only: about these fractions of its images, picked by a hash of each file's path (so
    # adding images moves no other), are its "validation" and "test" splits; the rest is "train".
    config.data.folder_validation_fraction = 0.0
    config.data.folder_test_fraction = 0.1

    config.model = ml_collections.ConfigDict()
    # vae/model/build.py's ARCHITECTURES: mlp | conv | hvae (two stochastic layers, MLP) | conv_hvae |
    # ladder | conv_ladder (model.num_layers latent layers over a top-down state, vae/model/ladder.py:
    # gated dense cells or conv cells)
    config.model.arch = "hvae"
    # p(x|z) (vae/model/likelihoods.py): bernoulli (binarised pixels) | logistic_mixture | categorical
    # (8-bit pixels, data.binarize=none; figures in nats per image and bits/dim of the 8-bit image)
    config.model.likelihood = "bernoulli"
    config.model.mixture_components = 5  # logistic_mixture: K logistics per sub-pixel
    # p(x|z) decoded in S stages over the image's 2x2 sub-grids, each stage's small head seeing the
    # pixels of the stages before (vae/model/stages.py): 1 (factorised) | 2 (checkerboard) | 4
    config.model.decoder_stages = 1
    config.model.latent_dim = 40  # hvae: the size of each of z1 and z2
    config.model.hidden_dims = (300, 300)  # MLP hidden layers (the decoder mirrors them)
    config.model.activation = "gated"  # relu | gated (Linear ⊙ sigmoid(Linear)) | elu | tanh
    config.model.kernel_init = "he_normal"  # lecun_normal | he_normal
    config.model.log_var_clip = (-6.0, 2.0)  # (lo, hi) clips every Gaussian log-variance; ()=none
    config.model.conv_channels = (32, 64)  # conv: channels of the stride-2 convolutions
    config.model.prior = "standard_normal"  # standard_normal (closed-form KL) | vampprior
    config.model.num_pseudo_inputs = 500  # vampprior: mixture components
    config.model.pseudo_input_mean = 0.05  # vampprior: pseudo-inputs start as N(mean, std²) pixels
    config.model.pseudo_input_std = 0.01
    config.model.init_output_bias = True  # decoder output bias starts at logit(training pixel means)
    # The ladders (vae/model/ladder.py). Layers count from the data up: z_1 next to x, z_L on top.
    config.model.num_layers = 8  # L latent layers
    # ladder: the size of each layer, z_1 first, L numbers; () gives every layer model.latent_dim.
    # The state and the cells are hidden_dims[-1] wide; hidden_dims also sizes the network that reads
    # x and its mirror that writes the decoder output.
    config.model.latent_dims = ()
    # conv_ladder: each layer is a map of latent_channels channels at its resolution: the L layers
    # spread over the len(conv_channels) resolutions H/2 ... H/2^S (evenly, the rest to the coarsest),
    # conv_channels[s - 1] the channels at H/2^s.
    config.model.latent_channels = 8
    # How q(z_l | x, z_>l) is made from p(z_l | z_>l): residual (NVAE: p's mean and log-variance plus
    # the posterior head's) | precision (LVAE: p weighted with a bottom-up Gaussian by their precisions)
    config.model.ladder_merge = "residual"
    config.model.bottleneck = 0.5  # a ladder cell's hidden width, a fraction of the state's (VDVAE: 0.25)

    config.train = ml_collections.ConfigDict()
    config.train.num_epochs = 100
    config.train.batch_size = 500
    config.train.optimizer = "adam"  # adam | adamw
    config.train.learning_rate = 3e-3
    config.train.lr_schedule = "cosine"  # constant | cosine | warmup_cosine
    config.train.final_lr_fraction = 0.0  # cosine schedules end at learning_rate × this
    config.train.warmup_epochs = 0.0  # learning-rate warm-up, for warmup_cosine
    config.train.weight_decay = 0.0  # adamw only
    config.train.normalize_grads = False  # divide each parameter tensor's gradient by its L2 norm
    config.train.grad_clip_norm = 0.0  # 0 disables clipping by global norm
    # Skip an update whose gradient norm (global, before clipping) is above this, as VDVAE does; a
    # norm that is not finite is always skipped. 0: skip only those. Skips are counted per epoch
    # (train/skipped_updates beside train/grad_norm); an epoch that skips every update stops the run.
    config.train.skip_threshold = 0.0
    config.train.ema_decay = 0.998  # evaluate (and select) an exponential moving average of the
    #   parameters with this decay per step, warmed up as min(decay, (1 + step) / (10 + step)) so a
    #   short run's average holds what it learnt; 0 disables
    config.train.objective = "elbo"  # elbo | iwae (importance-weighted bound, num_samples draws)
    config.train.num_samples = 1  # iwae: k
    config.train.beta = 1.0  # weight of the KL term
    config.train.kl_warmup_epochs = 20.0  # beta rises linearly from 0 over this many epochs
    config.train.free_bits = 0.0  # per-dimension KL floor in nats (Kingma et al., 2016); 0 disables
    # Stop once the validation ELBO has not improved for this many epochs after the KL warm-up
    # (needs data.validation_split); 0 trains all num_epochs. The best epoch is kept either way.
    config.train.early_stopping_patience = 0
    # scan: the whole epoch is one compiled program; steps: one per step; auto: steps for conv on CPU.
    config.train.epoch_loop = "auto"
    # device: the training set lives on every device and each step gathers its batch there; host:
    # each process sends only the rows of every batch its devices hold; auto: host over several processes.
    config.train.batch_source = "auto"
    config.train.checkpoint_every_epochs = 10
    config.train.keep_checkpoints = 3

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 1000
    config.eval.every_epochs = 1
    config.eval.active_unit_threshold = 0.01  # Burda et al.: Cov_x(E_q[z_u|x]) > 0.01
    # The KL term split into I_q(x; z) + KL(q(z) ‖ p(z)) every evaluation, on this many images of
    # the validation split (else the test split); O(N²·Z) work, I at most log N; 0 disables.
    config.eval.kl_split_examples = 1000

    return config
