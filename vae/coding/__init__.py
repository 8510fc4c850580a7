"""Lossless compression with a trained VAE: bits-back coding with asymmetric numeral systems
(BB-ANS, Townsend, Bird and Barber, ICLR 2019) on `constriction`'s ANS stack coder. The file a
model writes is as long as the images' negative ELBO, up to a few hundred bits per file.

    host_model.py  the model's functions the coder reads, in float64 on the host CPU, one
                  batch shape, p(x|z)'s integers from one program both sides call
    fixed_point.py  the model's outputs rounded to coarse grids (with their margins to a rounding
                  boundary: the guard band) and the integer counts of each sub-pixel's levels; the
                  integer tables (sigmoid, exp, the normal CDF): the same integers on every machine
    latent_code.py  the discretised latent code: bins, Gaussians under q(z|x) and p(z) from
                  integer counts, coded in rounds
    pixel_code.py  which uint8 arrays a likelihood codes, their symbols, pushing and popping them
                  round by round with the integer counts
    bbans.py      the codec: blocks of images pushed onto and popped off one ANS stack (the
                  latents in layers: one for the VAE, z2 and z1 for the HVAE), each block on the
                  first rounding grids (its variant) that keep every value out of the guard band
    first_image.py  the first image of a file, which has no bits to take back: a two-part code
    file_name_code.py  the images' file names, coded on the stack
    tiles.py      images of their own sizes cut into the model's tiles (edge tiles filled out by
                  copies the pixel code does not code), their sizes and channels on the stack
    container.py  the file, format 3 (format 4 with images of their own sizes): an 8-byte header
                  (more for several images) with the format's version, the coder's tag and a
                  check, the stack, its checksum
    codec.py      compress and decompress with a workdir's model: what the scripts call
    image_files.py  the user's image files (or array) in, PNG files (or the array) out
    errors.py     CodingError: what a user can fix, in one line; DecodeMismatch: a file that does not decode

May import vae.train, vae.workdir, vae.data, vae.model and vae.kl; nothing of vae.analysis,
vae.sweep or vae.cli (an independent sibling of vae.analysis).
"""
