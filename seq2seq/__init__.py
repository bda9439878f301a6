"""A Luong-attention GRU sequence-to-sequence chatbot trained on the Cornell Movie-Dialogs Corpus."""
