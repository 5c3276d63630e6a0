//! Model execution and the neural AIC codec.
