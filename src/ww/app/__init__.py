"""The composition root: from a typed configuration to backends, nodes, policy and a run.

* :mod:`ww.app.options`: :class:`RunOptions`, what one `ww run` was asked for, and the table
  of its flags;
* :mod:`ww.app.build`: the IPFS backend (embedded node or kubo client), the libp2p host, the
  dial and login policies, the limits, the capability servers' factories;
* :mod:`ww.app.run`: one `ww run`, from its options to the cell's exit status;
* :mod:`ww.app.argv`: options back as a command line, which starts a sub-cell's `ww run`.

The command line (:mod:`ww.cli`) only parses into these types and maps errors to exit codes.
Nothing here is imported before it is needed: `ww run /bin/true` pays for none of pycapnp,
cryptography or libp2p.
"""
