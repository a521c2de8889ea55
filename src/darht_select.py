"""Stage `darht_select`: with `darht.select.k` set (method darht), choose the K teachers of `darht.pool`'s `use: true`
entries with the lowest mean pairwise adversarial transferability, measured on the validation split; write the
candidates, the matrix, the chosen set and its score to results/darht_select.json (and plots/darht_select.json).

    python src/darht_select.py

Without a selection it writes a marker there, without importing torch. See robustkd/methods/darht_select.py.
"""
from robustkd import stage
from robustkd.methods import darht_select

if __name__ == "__main__":
    stage.run(darht_select.run_stage)
