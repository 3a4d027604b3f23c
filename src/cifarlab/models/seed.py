"""The seed notebook's CNN, layer for layer: 225,610 parameters for 10 classes.

Conv2D(32, 4x4, relu) -> MaxPool(2) -> Conv2D(32, 4x4, relu) -> MaxPool(2)
-> Flatten -> Dense(256, relu) -> Dense(classes, softmax).
The only addition is the parameter-free ``Rescaling(1/255)`` in front, which is the
notebook's ``x / 255`` moved inside the model.
"""

import keras
from keras import layers


def build(num_classes: int = 10) -> keras.Model:
    """Input ``(batch, 32, 32, 3)`` float pixels in 0-255 -> ``(batch, num_classes)`` probabilities."""
    return keras.Sequential(
        [
            keras.Input(shape=(32, 32, 3), name="pixels"),
            layers.Rescaling(1.0 / 255, name="scale"),
            layers.Conv2D(32, (4, 4), activation="relu", name="conv1"),
            layers.MaxPool2D((2, 2), name="pool1"),
            layers.Conv2D(32, (4, 4), activation="relu", name="conv2"),
            layers.MaxPool2D((2, 2), name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(256, activation="relu", name="dense"),
            # float32 softmax even under mixed precision: probabilities must sum to 1.
            layers.Dense(num_classes, activation="softmax", dtype="float32", name="probs"),
        ],
        name="seed",
    )
