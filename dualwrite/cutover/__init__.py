"""The cutover: the gate that says when the phase may move, and the move itself.

- gate.py    the gate's conditions, each with its value (it reads the copy's checkpoints and the stream's
             lag: this floor stands above both)
- flip.py    flip one step forward when the gate passes, postponed flips, rollback while SQLite is
             complete, hooks
- fenced.py  a move behind the write fence (dualwrite.fence), and what the operator sees of it
"""
