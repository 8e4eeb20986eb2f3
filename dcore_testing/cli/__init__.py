"""The simulator's ``dcore`` subcommands, ``replay`` and ``explore``: they plug into the
``dcore`` command through the ``dcore.commands`` entry-point group, so ``dcore`` itself
never imports the test kit."""
