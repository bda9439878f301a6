"""Train the seq2seq chatbot on data/train.txt, validating on data/val.txt.

    python train.py                                     # the tuned recipe (README: Conversation quality)
    python train.py --recipe tutorial                   # the PyTorch tutorial's recipe, 4,000 iterations
    python train.py --precision fp32                    # fp32 even where bf16 is native (the default: auto)
    python train.py --resume --iterations 10000         # continue checkpoints/last.pth to 10,000

Builds data/ first if it is missing (give --source for an offline copy of the corpus).
Every flag is also accepted in snake case (--learning_rate=0.0003), as a W&B agent passes it.
The recipes and the order in which a run's values are resolved: seq2seq/config.py.
"""

from seq2seq.run import main

if __name__ == "__main__":
    main()
