"""The round loop of one peer (trio): train → gossip Q steps → defend → mix → remember."""
