"""After the signature: the EntryPoint event follower, what each sponsored operation really spent."""
