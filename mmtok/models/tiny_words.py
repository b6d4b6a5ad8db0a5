"""The word list the tiny checkpoints' tokenizers are trained on (every family's tiny builder)."""

# A word list covering the local benchmark questions, so the tokenizer splits real words into
# a few sub-words rather than bytes. Extra words fall back to characters (BPE with full alphabet).
CORPUS = """
is there a an the in on of image picture photo this that what which where who how many color
yes no left right top bottom cat dog person car bus truck chair table bottle cup bird horse
man woman people sign street tree sky water grass red blue green white black yellow
answer question using single word or phrase with option letter from given choices directly
please describe object objects visible shown are do does can you see it they one two three
A B C D E answer the question using a single word or phrase
USER ASSISTANT system user assistant chat between curious human artificial intelligence
gives helpful detailed polite answers to human's questions
"""
