module wworacle

go 1.19

require github.com/ipfs/boxo v0.11.0
