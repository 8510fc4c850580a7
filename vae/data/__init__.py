"""Where images come from and how pixels reach the model.

    source.py         a prepared TFDS data set read into memory (and what to run when it is not)
    folder.py         a folder of your own PNG/JPEG images (data.name=folder:PATH): labels from
                      sub-folders, hash-stable splits, decoded once into a cache in the folder
    prepare.py        offline preparation (Fashion-MNIST from Debian's files)
    mnist_builder.py  the MNIST family built without TensorFlow
    split_cache.py    decoded splits cached beside the TFDS data
    dataset.py        the splits a run uses, from either source, binarised as the config says;
                      image_shape, the (H, W, C) a run's model is built for
    pixels.py         uint8 pixels -> model input; binarisation

Imports nothing of the package outside `vae.data`.
"""
