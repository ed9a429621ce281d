// Seed 001's RealTimeChat client, verbatim (lines 343-505 of the seed); Node's WebSocket is the ws package.
const WebSocket = require('ws');

// Real-time Chat Application
class RealTimeChat {
  constructor() {
    this.ws = null;
    this.room = null;
    this.user = null;
    this.reconnectAttempts = 0;
    this.maxReconnectAttempts = 5;
    this.reconnectDelay = 1000;
  }

  connect(url, user) {
    this.user = user;

    try {
      this.ws = new WebSocket(url);
      this.setupEventHandlers();
    } catch (error) {
      console.error('WebSocket connection error:', error);
      this.handleReconnect();
    }
  }

  setupEventHandlers() {
    this.ws.onopen = () => {
      console.log('Connected to chat server');
      this.reconnectAttempts = 0;
      this.onConnectionChange(true);
    };

    this.ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      this.handleMessage(message);
    };

    this.ws.onclose = (event) => {
      console.log('Disconnected from chat server');
      this.onConnectionChange(false);

      if (event.code !== 1000) { // Not a normal closure
        this.handleReconnect();
      }
    };

    this.ws.onerror = (error) => {
      console.error('WebSocket error:', error);
      this.onError(error);
    };
  }

  handleMessage(message) {
    switch (message.type) {
      case 'welcome':
        this.onWelcome(message.clientId);
        break;

      case 'room_joined':
        this.room = message.room;
        this.onRoomJoined(message.room, message.users);
        break;

      case 'chat':
        this.onChatMessage(message);
        break;

      case 'user_joined':
        this.onUserJoined(message.user, message.users);
        break;

      case 'user_left':
        this.onUserLeft(message.user);
        break;

      case 'typing':
        this.onTypingIndicator(message.user, message.isTyping);
        break;

      case 'error':
        this.onError(message.message);
        break;
    }
  }

  joinRoom(roomName) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.sendMessage({
        type: 'join',
        room: roomName,
        user: this.user
      });
    }
  }

  leaveRoom() {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.sendMessage({
        type: 'leave'
      });
    }
  }

  sendMessage(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    }
  }

  sendChatMessage(text) {
    this.sendMessage({
      type: 'chat',
      text: text
    });
  }

  sendTypingIndicator(isTyping) {
    this.sendMessage({
      type: 'typing',
      isTyping: isTyping
    });
  }

  sendPrivateMessage(targetUser, text) {
    this.sendMessage({
      type: 'private_message',
      target: targetUser,
      text: text
    });
  }

  handleReconnect() {
    if (this.reconnectAttempts < this.maxReconnectAttempts) {
      this.reconnectAttempts++;
      const delay = this.reconnectDelay * Math.pow(2, this.reconnectAttempts - 1);

      console.log(`Reconnecting... Attempt ${this.reconnectAttempts}/${this.maxReconnectAttempts}`);

      setTimeout(() => {
        this.connect(this.ws.url, this.user);
      }, delay);
    } else {
      console.error('Max reconnection attempts reached');
      this.onMaxReconnectAttemptsReached();
    }
  }

  disconnect() {
    if (this.ws) {
      this.ws.close(1000, 'User disconnecting');
      this.ws = null;
    }
  }

  // Event callbacks (to be implemented by the application)
  onConnectionChange(isConnected) {}
  onWelcome(clientId) {}
  onRoomJoined(room, users) {}
  onChatMessage(message) {}
  onUserJoined(user, users) {}
  onUserLeft(user) {}
  onTypingIndicator(user, isTyping) {}
  onError(error) {}
  onMaxReconnectAttemptsReached() {}
}

module.exports = { RealTimeChat };
