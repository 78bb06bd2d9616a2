"""Dealer-assisted two-party inference engine (pure numpy + AES), independent of CrypTen."""
