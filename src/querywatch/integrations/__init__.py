"""The tools an app may already run beside querywatch (Sentry), told what querywatch
finds. Each is used only when the app has imported and set it up: querywatch imports
none of them."""
