#!/bin/sh
# A shell cell: prints what arrives on the fd the operator named "input".
#
#     ww run --fd input=5 examples/read_fd.sh 5<some-file
set -eu
: "${WW_FD_INPUT:?the operator did not pass --fd input=<fd>}"
echo "shell cell: WW_FD_INPUT=$WW_FD_INPUT, contents:"
cat <&"$WW_FD_INPUT"
echo "shell cell: I am uid $(id -u) in $(pwd), and I see these processes: $(ls /proc | grep -c '^[0-9]')"
