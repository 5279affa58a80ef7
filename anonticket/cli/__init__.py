"""The command line: the parser, the commands, the admin client, the sandbox."""
