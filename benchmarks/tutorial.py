"""The seed tutorial's linear regression (/work/shared/seed/000_65e4d3fee14ddec0.txt), made
headless: the Agg backend, and ``savefig`` instead of ``show``. Otherwise verbatim: it is
the baseline that ``linreg train`` is measured against.

    python benchmarks/tutorial.py [FIGURE.png]    (default: tutorial.png)
"""

# The tutorial's own code, kept as it is: legacy np.random, super(Class, self), unused `epoch`.
# ruff: noqa: NPY002, UP008, B007

import sys

import matplotlib

matplotlib.use("Agg")

# importing required modules
import matplotlib.pyplot as plt
import numpy as np
import torch

# Generating synthetic data
np.random.seed(0)
X = np.random.rand(100, 1)
y = 2 * X + 1 + 0.1 * np.random.randn(100, 1)  # simple linear regression equation

# Converting NumPy arrays to PyTorch tensors
X_tensor = torch.from_numpy(X).float()
y_tensor = torch.from_numpy(y).float()


# Defining the linear regression model
class LinearRegression(torch.nn.Module):
    def __init__(self):
        super(LinearRegression, self).__init__()
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, x):
        return self.linear(x)


# Instantiating the model
model = LinearRegression()

# Defining loss function and optimizer
criterion = torch.nn.MSELoss()
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

# Training the model
for epoch in range(100):
    # Forward pass
    outputs = model(X_tensor)
    loss = criterion(outputs, y_tensor)

    # Backward pass and optimization
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()

# Converting predicted values to NumPy array for plotting
predicted = model(X_tensor).detach().numpy()

# Plotting the data and regression line
plt.scatter(X, y, label="Original data")
plt.plot(X, predicted, color="red", label="Fitted line")
plt.xlabel("X")
plt.ylabel("y")
plt.title("Linear Regression")
plt.legend()
plt.savefig(sys.argv[1] if len(sys.argv) > 1 else "tutorial.png")
