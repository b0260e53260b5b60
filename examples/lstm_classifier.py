"""An LSTM sequence classifier and two Flax ports of it, through check_port.

    python examples/lstm_classifier.py

The torch model: Embedding -> nn.LSTM(batch_first) -> Linear on the last step. Port 1 keeps
torch's LSTM tensors (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0) in a hand-written
linen cell: it trains alike. Port 2 uses Flax's nn.RNN(nn.LSTMCell): the forward pass maps
(torch's two biases per gate are summed into the cell's one), but torch trains both biases,
so their sum moves twice as fast; the check fails at the LSTM and says so.
"""

from jaxtrain.parity import check_port
from jaxtrain.parity.corpus.real import LinenLSTM, TorchLSTM, tokens

ids, _, labels = tokens(14, 192)
train, test = (ids[:96], labels[:96]), (ids[96:], labels[96:])
passed = {}
for name, port in (("torch's layout", LinenLSTM(cell="torch")), ("nn.LSTMCell", LinenLSTM(cell="flax"))):
    report = check_port(TorchLSTM(), port, train=train, test=test, optimizer="sgd",
                        optimizer_kwargs={"lr": 0.5}, batch_size=32, steps=30)
    passed[name] = report.passed
    print(f"--- port on {name}: {'PASSED' if report.passed else 'FAILED'}")
    if report.diagnosis:
        print(report.diagnosis["sentence"])
raise SystemExit(0 if passed["torch's layout"] and not passed["nn.LSTMCell"] else 1)  # as expected, or not
