// kubo's own chunkers as an oracle: boxo v0.11.0's chunker package (the one kubo 0.22 builds
// with) cuts FILE as `ipfs add --chunker CHUNKER` would, and prints each chunk's length.
// A chunker string boxo refuses: "error: <its message>", exit status 3.
// usage: oracle FILE CHUNKER      (record.py runs it and writes ../chunker_vectors.json)
package main

import (
	"bufio"
	"fmt"
	"os"

	chunk "github.com/ipfs/boxo/chunker"
)

func main() {
	f, err := os.Open(os.Args[1])
	if err != nil {
		panic(err)
	}
	spl, err := chunk.FromString(bufio.NewReaderSize(f, 1<<16), os.Args[2])
	if err != nil {
		fmt.Printf("error: %s\n", err)
		os.Exit(3)
	}
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	for {
		b, err := spl.NextBytes()
		if err != nil {
			return
		}
		fmt.Fprintln(w, len(b))
	}
}
