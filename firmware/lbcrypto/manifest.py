# Freeze lbcrypto into a MicroPython build: include("path/to/firmware/lbcrypto").
# The package's own directory is this file's directory, hence base_path="..";
# files are listed so that manifest.py itself is not frozen. The port must
# have cryptolib (MICROPY_PY_CRYPTOLIB), hashlib.sha256 and long ints (mpz).
metadata(
    description="Lowband device link crypto: X25519, AES-GCM/CCM-8, Noise KK initiator, DATA frame AEAD.",
    version="0.1.0",
)

package(
    "lbcrypto",
    files=("__init__.py", "aes_modes.py", "link_aead.py", "noise_kk.py", "x25519.py"),
    base_path="..",
)
